"""Which transfer strategy pays at which amount of target data? Synthetic cross-region scenario.

Grid: strategies scratch, zero_shot, full_finetune, frozen_encoder, adapter, lora x target user
fraction 0.01, 0.05, 0.2, 1.0 x seeds 0, 1, 2 (72 cells). SASRec is pretrained once per seed on
the source domain (1,500 users, 500 items) and reused by every strategy and fraction of that seed;
the target has 1,500 disjoint users over the same items. The seed sets model init, batch order and
which target users form the few-shot subset (data.fraction_seed). Measured: 24.1 min on 2 CPU
cores (AMD EPYC VM, 2026-11-28).

  python launch.py --config experiments/fraction_study/config.py --workdir runs/fraction_study
  python -m xrec.report runs/fraction_study            # tables + plots in runs/fraction_study/report/

One cell (a cluster job per cell): `--list` prints the cells, `--only INDEX` (or `--only KEY`) runs one.
Expected numbers (measured, experiments/fraction_study/README.md): test NDCG@10 at 20% / 100% of the
target users: full_finetune 0.129 / 0.262, scratch 0.077 / 0.226, zero_shot 0.089 / 0.092.
"""

from xrec.config import base_config
from xrec.train.sweep import strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.01, 0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.data.synthetic.update(dict(scenario="cross_region", num_source_users=1500, num_target_users=1500,
                               num_source_items=500, num_target_items=500, mean_seq_len=15.0, max_seq_len=60))
  c.model.update(dict(max_len=30, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, vocab_multiple=64))
  c.experiment.pretrain.update(dict(num_epochs=10.0, batch_size=64, eval_every_steps=50,
                                    checkpoint_every_steps=100, early_stopping_patience=3, warmup_steps=20))
  # target runs: epochs scale with the few-shot size, so cap steps by early stopping on validation
  c.train.update(dict(num_epochs=20.0, batch_size=32, eval_every_steps=20, checkpoint_every_steps=100,
                      early_stopping_patience=3, progress_bar=False))
  c.optim.warmup_steps = 10
  return c


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
