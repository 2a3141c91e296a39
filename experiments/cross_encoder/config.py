"""Feature transfer across encoders: a pretrained SASRec's item table initialises other encoders.

On the fraction study's synthetic cross-region setting (experiments/fraction_study/config.py:
1,500 users per domain over the same 500 items, d = 32), SASRec is pretrained on the source once
per seed. On the target (trained on 20% of the users = 300, evaluated on all 1,500), each of
SASRec, GRU4Rec and NextItNet trains from scratch or with `embedding_transfer` (the pretrained item
table and output bias, mapped by item key, initialise the encoder; its blocks start fresh);
SASRec also with `full_finetune` (everything transfers). Same 1,000-step budget with early stopping
and learning-rate grid as the fraction study, 5 seeds, Holm-corrected paired tests; the gain table
compares each cell with scratch of the same encoder.

  python launch.py --config experiments/cross_encoder/config.py --workdir runs/cross_encoder
  python -m xrec.report runs/cross_encoder

Measured numbers: experiments/cross_encoder/README.md.
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
CELLS = (("sasrec", "scratch"), ("sasrec", "embedding_transfer"), ("sasrec", "full_finetune"),
         ("gru4rec", "scratch"), ("gru4rec", "embedding_transfer"),
         ("nextitnet", "scratch"), ("nextitnet", "embedding_transfer"))


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.user_fraction = 0.2
  c.experiment.pretrain.model = ml_collections.ConfigDict({"name": "sasrec"})  # the source model, always
  return c


def sweep():
  for seed in SEEDS:
    for model, strategy in CELLS:
      yield {"model.name": model, "transfer.strategy": strategy, "seed": seed, "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "model.name"}
