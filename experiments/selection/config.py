"""Do transferability estimates predict which pretrained model fine-tunes best? (issue 13)

A zoo of 8 pretrained encoders per target (SASRec, GRU4Rec, NextItNet, BERT4Rec x embed 32 / 64),
each pretrained once (seed 0: the zoo is a fixed set of checkpoints) on the source domain of the
fraction study's synthetic cross-region setting, and 3 targets (the generator's shift 0.25, 0.5,
0.75; 5% of the target's users train, all evaluated).
Every (target, candidate) pair is fine-tuned (full_finetune) under the fraction study's protocol:
1,000-step budget with early stopping, learning rate tuned per cell on validation, seeds 0-4.
`analyze.py` then estimates each candidate on its target without fine-tuning (xrec.select: item
overlap, zero-shot NDCG@10, linear probe, LogME, label CKA, MMD to the source; user CKA is n/a
here, the cross-region domains share no user), next to a free baseline (each checkpoint's own
source validation NDCG@10), and reports each estimator's Kendall tau, top-1 hit rate and regret
against the fine-tuned ranking (validation NDCG@10) per target (a shift and a seed) and averaged,
with the estimators' wall time against fine-tuning's. Measured: README.md here.

  python launch.py --config experiments/selection/config.py --workdir runs/selection
  python experiments/selection/analyze.py runs/selection

`experiments/selection/smoke.py` is a minutes-long version (1 target, 2 encoders, tiny models,
1 seed) that checks the pipeline, not the question.
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
ENCODERS = ("sasrec", "gru4rec", "nextitnet", "bert4rec")
SIZES = (32, 64)
SHIFTS = (0.25, 0.5, 0.75)


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.user_fraction = 0.05
  c.transfer.strategy = "full_finetune"
  # one checkpoint per (shift, encoder, size), whatever the cell's fine-tuning seed
  c.experiment.pretrain.seed = 0
  c.experiment.pretrain.data = ml_collections.ConfigDict({"fraction_seed": 0})
  return c


def grid(encoders=ENCODERS, sizes=SIZES, shifts=SHIFTS, seeds=SEEDS):
  for seed in seeds:
    for shift in shifts:
      for encoder in encoders:
        for size in sizes:
          yield {"data.synthetic.shift": shift, "model.name": encoder, "model.embed_dim": size, "seed": seed,
                 "data.fraction_seed": seed}


def sweep():
  return grid()


def metrics():
  return {"metrics": ("ndcg@10",), "columns": "data.synthetic.shift", "rows": "model.name",
          "row_detail": "model.embed_dim"}
