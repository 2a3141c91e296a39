"""L2-SP against full fine-tuning and scratch, few-shot, on the fraction study's setting.

The fraction study's synthetic cross-region setting (experiments/fraction_study/config.py: 1,500
users per domain over the same 500 items, SASRec d 32, 2 blocks; pretraining early-stopped on the
source), 5% of the target's users train (75), all 1,500 evaluated, the same 1,000-step budget
with early stopping and the same learning-rate grid tuned per cell on validation, 5 seeds,
Holm-corrected paired tests. Rows: scratch, full_finetune, and l2sp (Li et al., ICML 2018: full
fine-tuning plus alpha/2 ||w - w0||^2 toward the pretrained weights and beta/2 ||w||^2 on fresh
params; xrec/train/hooks/l2sp.py) at alpha 0.01, 0.1 and 1 (beta 0.01), so the penalty's weight is
a row, not a tuned hidden choice.

  python launch.py --config experiments/l2sp/config.py --workdir runs/l2sp --jobs 2
  python -m xrec.report runs/l2sp

Results: experiments/l2sp/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module, strategy_variants_grid

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
ROWS = (("scratch", {}), ("full_finetune", {}), ("l2sp", {"transfer.l2sp.alpha": 0.01}),
        ("l2sp", {"transfer.l2sp.alpha": 0.1}), ("l2sp", {"transfer.l2sp.alpha": 1.0}))


def get_config(arg=None):
  del arg
  return load_config_module(FRACTION_STUDY).synthetic_study_config()


def sweep():
  return strategy_variants_grid(ROWS, "data.user_fraction", (0.05,), SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "transfer.l2sp.alpha"}
