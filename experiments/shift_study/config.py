"""How does the transfer gain change with domain shift? Synthetic cross-region scenario.

Grid: the generator's shift knob (data.synthetic.shift) 0.0, 0.25, 0.5, 0.75, 1.0 x strategies
scratch, zero_shot, full_finetune, adapter x seeds 0-4 (100 cells), training on 5% of the target
users (75) and evaluating on all 1,500. Each (shift, seed) pretrains once on its source domain.
The protocol is the fraction study's (experiments/fraction_study/config.py): 1,000-step budget with
early stopping for every trained cell, learning rates tuned per cell on validation, 5 seeds,
Holm-corrected paired tests. The gain tables of the report give test NDCG@10 / HR@10 of each
strategy minus scratch, paired by seed, per shift.

  python launch.py --config experiments/shift_study/config.py --workdir runs/shift_study
  python -m xrec.report runs/shift_study               # tables + plots in runs/shift_study/report/

Measured numbers and wall time: experiments/shift_study/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module, strategy_grid

# the fraction study's setting (data, model, pretraining, budget, tuning grid)
FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")

SHIFTS = (0.0, 0.25, 0.5, 0.75, 1.0)
STRATEGIES = ("scratch", "zero_shot", "full_finetune", "adapter")


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.user_fraction = 0.05
  return c


def sweep():
  return strategy_grid(STRATEGIES, "data.synthetic.shift", SHIFTS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.synthetic.shift"}
