"""How does the transfer gain change with domain shift? Synthetic cross-region scenario.

Grid: the generator's shift knob (data.synthetic.shift) 0.0, 0.25, 0.5, 0.75, 1.0 x strategies
scratch, zero_shot, full_finetune, adapter x seeds 0, 1, 2 (60 cells), at 5% of the target users.
Each (shift, seed) pretrains once on its source domain; the gain tables of the report give
test NDCG@10 / HR@10 of each strategy minus scratch, paired by seed, per shift.

  python launch.py --config experiments/shift_study/config.py --workdir runs/shift_study
  python -m xrec.report runs/shift_study               # tables + plots in runs/shift_study/report/

Expected numbers (measured, 14.5 min on 2 CPU cores, experiments/shift_study/README.md): gain in test
NDCG@10 over scratch at shift 0 / 0.75 / 1.0: zero_shot +0.074 / -0.005 / -0.013,
full_finetune +0.086 / +0.013 / +0.049.
"""

from xrec.config import base_config
from xrec.train.sweep import strategy_grid

SHIFTS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRATEGIES = ("scratch", "zero_shot", "full_finetune", "adapter")
SEEDS = (0, 1, 2)


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "pretrain_transfer"
  c.data.user_fraction = 0.05
  c.data.synthetic.update(dict(scenario="cross_region", num_source_users=1500, num_target_users=1500,
                               num_source_items=500, num_target_items=500, mean_seq_len=15.0, max_seq_len=60))
  c.model.update(dict(max_len=30, embed_dim=32, num_layers=2, num_heads=2, mlp_dim=64, vocab_multiple=64))
  c.experiment.pretrain.update(dict(num_epochs=10.0, batch_size=64, eval_every_steps=50,
                                    checkpoint_every_steps=100, early_stopping_patience=3, warmup_steps=20))
  c.train.update(dict(num_epochs=30.0, batch_size=32, eval_every_steps=10, checkpoint_every_steps=100,
                      early_stopping_patience=4, progress_bar=False))
  c.optim.warmup_steps = 10
  return c


def sweep():
  return strategy_grid(STRATEGIES, "data.synthetic.shift", SHIFTS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.synthetic.shift"}
