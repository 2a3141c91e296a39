"""Pretrain -> transfer demo on the synthetic cross-region scenario (the README's main command).

Pretrains SASRec on the source domain (3,000 users), then transfers it to a
few-shot target (10% of the target's 3,000 disjoint users, same items) with
scratch, zero_shot, full_finetune, frozen_encoder, adapter and lora, and prints
one table (strategy, trainable params, NDCG@10, HR@10):

  python launch.py --config configs/transfer_synthetic.py --workdir runs/transfer_synthetic

Pick other strategies / fraction / shift from the command line, e.g.
  --config.experiment.strategies='("scratch","full_finetune","partial_freeze")'
  --config.data.user_fraction=0.05 --config.data.synthetic.shift=0.6
"""

from xrec.config import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.experiment.pretrain.num_epochs = 15.0
  c.data.user_fraction = 0.1  # few-shot target: 300 users
  c.train.num_epochs = 30.0  # on the target (few users: few steps per epoch)
  c.train.batch_size = 64
  c.train.eval_every_steps = 25
  c.train.checkpoint_every_steps = 100
  c.train.early_stopping_patience = 4
  c.optim.warmup_steps = 20
  return c
