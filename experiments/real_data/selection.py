"""The selection study (experiments/selection) on a real-data scenario: SASRec, GRU4Rec, NextItNet,
BERT4Rec and HSTU at embed 32 and 64, each pretrained on the scenario's source domain and fine-tuned
(full_finetune) on 5% of its target's users, seeds 0-4; then each candidate's transferability
estimates on the target against its fine-tuned result. The argument: ml1m_cross_region,
ml1m_cross_genre or cross_app, then that scenario's own arguments (one target per scenario: run
all three for three targets). Protocol and budgets as in the scenario's study file.

  python launch.py --config experiments/real_data/selection.py:ml1m_cross_region,cpu \\
      --workdir runs/selection_ml1m_cross_region
  python experiments/selection/analyze.py runs/selection_ml1m_cross_region

Expected numbers: not yet run on the real archives (no internet here).
"""

import os

from xrec.train.runner import SEEDS, real_data_scenario

ENCODERS = ("sasrec", "gru4rec", "nextitnet", "bert4rec", "hstu")
SIZES = (32, 64)


def get_config(arg=None):
  c = real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))
  c.transfer.strategy = "full_finetune"
  c.data.user_fraction = 0.05
  # each candidate trains with its encoder's own objective (the scenarios name full_softmax, which
  # a bidirectional BERT4Rec cannot train with: () = full softmax for causal encoders, cloze for it)
  c.objective.terms = ()
  return c


def sweep():
  for seed in SEEDS:
    for encoder in ENCODERS:
      for size in SIZES:
        yield {"model.name": encoder, "model.embed_dim": size, "seed": seed, "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10",), "columns": "model.embed_dim", "rows": "model.name"}
