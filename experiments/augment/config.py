"""Augmentation and synthesis for scarce target data: do they help, with and without contrast?

On the fraction study's synthetic cross-region target (1,500 users over 500 items, SASRec d = 32),
5% or 20% of the users train and all 1,500 are evaluated. Rows (experiment.variant labels the
variants of a strategy):
  scratch                     the target alone
  scratch:augment             + augmented training examples (data.augment.prob 0.5; ops crop, mask,
                              reorder, substitute, insert)
  scratch:augment+cl4srec     + the CL4SRec contrastive term over two augmented views (weight 0.1)
  full_finetune               the pretrained source model fine-tuned
  full_finetune:synthesis     + ASReP-style pseudo-interactions: the pretrained model continues
                              every training part shorter than 10 items by up to 5 items it gives
                              probability >= 0.05 (data.synthesis, forward)
Same 1,000-step budget, learning-rate grid and 5 seeds as the fraction study, Holm-corrected
paired tests (every row against scratch).

  python launch.py --config experiments/augment/config.py --workdir runs/augment
  python -m xrec.report runs/augment

Measured numbers: experiments/augment/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
FRACTIONS = (0.05, 0.2)
AUGMENT = {"data.augment.prob": 0.5}
ROWS = (
    ("scratch", "", {}),
    ("scratch", "augment", AUGMENT),
    ("scratch", "augment+cl4srec", {**AUGMENT, "objective.terms": (("full_softmax", 1.0), ("cl4srec", 0.1))}),
    ("full_finetune", "", {}),
    ("full_finetune", "synthesis", {"data.synthesis.num_items": 5}),
)


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.augment.update(dict(ops=("crop", "mask", "reorder", "substitute", "insert"), prob=0.0))
  c.data.synthesis.update(dict(num_items=0, min_len=10, confidence=0.05, direction="forward"))
  return c


def sweep():
  for seed in SEEDS:
    for fraction in FRACTIONS:
      for strategy, variant, extra in ROWS:
        cell = {"transfer.strategy": strategy, **extra, "data.user_fraction": fraction, "seed": seed,
                "data.fraction_seed": seed}
        if variant:
          cell["experiment.variant"] = variant
        yield cell


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "experiment.variant"}
