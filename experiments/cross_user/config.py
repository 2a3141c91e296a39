"""Do models that read the user's source-domain history beat target-only transfer, and how does
that depend on how many users the domains share? Synthetic cross-platform scenario.

The fraction study's setting (experiments/fraction_study/config.py: 1,500 users per domain over
the same 500 items, SASRec d = 32, the generator's default shift 0.2), but on the cross-platform
scenario whose user-overlap knob (data.synthetic.user_overlap) says which share of the target's
users also have a source history: 0.25, 0.5, 1.0. 5% of the target's users train (75) and all
1,500 are evaluated. Rows: scratch, full_finetune (the pretrained model, target history only),
cross_user:merged (C2DSR-style merged chronological sequences) and cross_user:prefix (a token
carrying the frozen source encoder's representation of the user's source history). Same
1,000-step budget, early stopping and learning-rate grid as the fraction study, 5 seeds,
Holm-corrected paired tests.

  python launch.py --config experiments/cross_user/config.py --workdir runs/cross_user
  python -m xrec.report runs/cross_user

Measured numbers: experiments/cross_user/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
OVERLAPS = (0.25, 0.5, 1.0)
ROWS = (("scratch", None), ("full_finetune", None), ("cross_user", "merged"), ("cross_user", "prefix"))


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.synthetic.scenario = "cross_platform"
  c.data.user_fraction = 0.05
  return c


def sweep():
  for seed in SEEDS:
    for overlap in OVERLAPS:
      for strategy, mode in ROWS:
        cell = {"transfer.strategy": strategy, "data.synthetic.user_overlap": overlap, "seed": seed,
                "data.fraction_seed": seed}
        if mode:
          cell["transfer.cross_user.mode"] = mode
        yield cell


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.synthetic.user_overlap",
          "row_detail": "transfer.cross_user.mode"}
