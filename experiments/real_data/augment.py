"""Augmentation and synthesis on real data: do they help scarce target data, with and without contrast?

The rows of experiments/augment/config.py on a real scenario (the first argument names the
scenario file, the rest go to it):
  scratch                     the target alone
  scratch:augment             + augmented training examples (data.augment.prob 0.5; ops crop, mask,
                              reorder, substitute by co-occurrence, insert)
  scratch:augment+cl4srec     + the CL4SRec contrastive term over two augmented views (weight 0.1)
  full_finetune               the pretrained source model fine-tuned
  full_finetune:synthesis     + ASReP-style pseudo-interactions: the pretrained model continues
                              every training part shorter than 30 items by up to 5 items it gives
                              probability >= 0.05 (forward). MovieLens users have at least 20
                              ratings, so the synthetic study's threshold of 10 would lengthen
                              none; each cell's results.json records how many users and items it
                              added.
x target user fraction 0.05, 0.2 x seeds 0-4. Protocol and budgets as in the scenario's study file
(one pretraining per seed; every cell evaluated on the same target users).

  python launch.py --config experiments/real_data/augment.py:ml1m_cross_region,cpu \\
      --workdir runs/augment_ml1m_cross_region
  python -m xrec.report runs/augment_ml1m_cross_region

Expected numbers: not yet run on the real archives (no internet here); the synthetic study's are
in experiments/augment/README.md.
"""

import os

from xrec.train.runner import SEEDS, real_data_scenario, strategy_variants_grid

AUGMENT = {"data.augment.prob": 0.5}
ROWS = (
    ("scratch", {}),
    ("scratch", {**AUGMENT, "experiment.variant": "augment"}),
    ("scratch", {**AUGMENT, "objective.terms": (("full_softmax", 1.0), ("cl4srec", 0.1)),
                 "experiment.variant": "augment+cl4srec"}),
    ("full_finetune", {}),
    ("full_finetune", {"data.synthesis.num_items": 5, "experiment.variant": "synthesis"}),
)
FRACTIONS = (0.05, 0.2)


def get_config(arg=None):
  c = real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))
  c.data.augment.update(dict(ops=("crop", "mask", "reorder", "substitute", "insert"), prob=0.0))
  c.data.synthesis.update(dict(num_items=0, min_len=30, confidence=0.05, direction="forward"))
  return c


def sweep():
  return strategy_variants_grid(ROWS, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "experiment.variant"}
