"""Which transfer strategy pays at which amount of target data? Synthetic cross-region scenario.

Grid: strategies scratch, zero_shot, full_finetune, frozen_encoder, adapter, lora x target user
fraction 0.01, 0.05, 0.2, 1.0 x seeds 0-4 (120 cells). Protocol (DESIGN.md, issue 8):
  * SASRec is pretrained once per seed on the source domain (1,500 users, 500 items; 40 epochs,
    early stopping) and reused by every strategy and fraction of that seed;
  * the target has 1,500 disjoint users over the same items; the fraction limits TRAINING users
    only (15 / 75 / 300 / 1,500 users), and every cell is evaluated on all 1,500 target users;
  * every trained cell gets the same budget, 1,000 optimizer steps of batch 32 whatever the
    fraction, with validation every 50 steps and early stopping after 5 evaluations without gain;
  * each strategy's learning rate is chosen per cell on validation from {3e-4, 1e-3, 3e-3, 1e-2};
  * 5 seeds (model init, batch order, which users form the few-shot subset), paired tests with
    Holm correction, 95% CIs (xrec/report).

  python launch.py --config experiments/fraction_study/config.py --workdir runs/fraction_study
  python -m xrec.report runs/fraction_study            # tables + plots in runs/fraction_study/report/

One cell (a cluster job per cell): `--list` prints the cells, `--only INDEX` (or `--only KEY`) runs one.
Measured numbers and wall time: experiments/fraction_study/README.md.
"""

from xrec.defaults import base_config
from xrec.train.runner import SEEDS, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.01, 0.05, 0.2, 1.0)


def synthetic_study_config():
  """The small synthetic setting shared by the fraction and shift studies."""
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.data.synthetic.update(dict(scenario="cross_region", num_source_users=1500, num_target_users=1500,
                               num_source_items=500, num_target_items=500, mean_seq_len=15.0, max_seq_len=60))
  c.model.update(dict(max_len=30, embed_dim=32, vocab_multiple=64))
  c.model.sasrec.update(dict(num_layers=2, num_heads=2, mlp_dim=64))
  c.experiment.pretrain.train.update(dict(num_epochs=40.0, batch_size=64, eval_every_steps=100,
                                          checkpoint_every_steps=200, early_stopping_patience=5))
  c.experiment.pretrain.optim.warmup_fraction = 0.05
  c.train.update(dict(num_steps=1000, batch_size=32, eval_every_steps=50, checkpoint_every_steps=250,
                      early_stopping_patience=5, progress_bar=False))
  c.data.eval_population = "all"
  c.tune.lr = (3e-4, 1e-3, 3e-3, 1e-2)
  return c


def get_config(arg=None):
  del arg
  return synthetic_study_config()


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
