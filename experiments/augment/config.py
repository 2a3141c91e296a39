"""Augmentation for scarce target data: does training on augmented sequences help?

On the fraction study's synthetic cross-region target (1,500 users over 500 items, SASRec d = 32,
trained from scratch: augmentation is the alternative to transfer here), 5% or 20% of the users
train and all 1,500 are evaluated. Rows: data.augment.prob, the probability that a training
example is built from an augmented sequence (0 = none; 0.5 with ops crop, mask, reorder,
substitute, insert). Same 1,000-step budget, learning-rate grid and 5 seeds as the fraction study.

  python launch.py --config experiments/augment/config.py --workdir runs/augment
  python -m xrec.report runs/augment
"""

import os

from xrec.train.sweep import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
PROBS = (0.0, 0.5)
FRACTIONS = (0.05, 0.2)


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.transfer.strategy = "scratch"
  c.data.augment.ops = ("crop", "mask", "reorder", "substitute", "insert")
  return c


def sweep():
  for seed in SEEDS:
    for fraction in FRACTIONS:
      for prob in PROBS:
        yield {"data.augment.prob": prob, "data.user_fraction": fraction, "seed": seed, "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "rows": "data.augment.prob", "columns": "data.user_fraction"}
