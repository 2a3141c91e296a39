"""Pretrain -> transfer demo on the synthetic cross-region scenario (the README's main command).

Pretrains SASRec on the source domain (3,000 users), then trains on a few-shot target (10% of the
target's 3,000 disjoint users, same items) with scratch, zero_shot, full_finetune, frozen_encoder,
adapter and lora, and prints one table. The protocol is the one of every xrec transfer table:
every strategy is evaluated on all 3,000 target users, gets the same budget in optimizer steps
(with early stopping on validation) and its own learning rate, chosen on validation from
{1e-3, 3e-3, 1e-2}. One seed, so the table's intervals and tests are per-user paired bootstraps.

  python launch.py --config configs/transfer_synthetic.py --workdir runs/transfer_synthetic

Pick other strategies / fraction / shift from the command line, e.g.
  --config.experiment.strategies='("scratch","full_finetune","partial_freeze")'
  --config.data.user_fraction=0.05 --config.data.synthetic.shift=0.6
Measured numbers: README.md (quick start), artifacts in experiments/quickstart/.
"""

from xrec.defaults import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.experiment.pretrain.train.update(dict(num_epochs=15.0, eval_every_steps=100, checkpoint_every_steps=200))
  c.data.user_fraction = 0.1  # few-shot target: 300 training users; evaluation on all 3,000
  c.train.update(dict(num_steps=400, batch_size=64, eval_every_steps=50, checkpoint_every_steps=400,
                      early_stopping_patience=3))
  c.tune.lr = (1e-3, 3e-3, 1e-2)
  return c
