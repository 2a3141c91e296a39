"""Frozen + adaptor vs LoRA-tuned vs fully tuned text towers on a real zero-overlap target (issue 30).

The scenario is the real-data text study's (experiments/real_data/text.py): MovieLens-1M
cross-genre by default (same users, disjoint movies; items by "title (year) genres"), or two
interaction files with item attributes (cross_app). Items go through the real all-MiniLM-L6-v2
(`minilm`, requirements-text.txt). One source pretraining per seed, its text frozen
(experiment.pretrain resets the tower fields: every row transfers the same pretrained model); on
the target the tower is the variable (xrec/models/text_tower.py):

  frozen        the sentence encoder's cached vectors (model.text.tune="")
  lora          LoRA of rank 8 on the query and value of all 6 layers (tune_layers 6)
  full_top      the top layer tuned in full (tune_layers 1; the 5 below cached as token states)
  full          all 6 layers tuned in full (only the token embeddings cached)

under two presets (experiment.variant "text:<tower>"): adaptor_only (the sequence encoder frozen; adaptor + tower train) and
full_finetune (everything trains), plus a fresh ID model (scratch) as the baseline. 5% and 20% of
the target's users train, all are evaluated; seeds 0-4; budgets from the scenario's preset (cpu /
full); the learning rate tuned on seed 0 and reused (tune once). Cost: each cell's wall seconds and
trainable params are in its results; experiments/text_tower/cost.py times the item side alone.

  python launch.py --config experiments/text_tower/config.py:ml1m_cross_genre,full --workdir runs/text_tower_ml1m
  python -m xrec.report runs/text_tower_ml1m

A tuned tower runs its layers over the whole catalogue's tokens every step (about 3,700 titles of
12 tokens on average here, in length buckets): cost.py measures about 5 s per 1,000 items per step
for 6 tuned layers on one CPU core (README), so this study is for an accelerator. On a CPU,
experiments/text_tower/cpu.py runs the same comparison with towers that tune the top layer only.
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, load_config_module, strategy_variants_grid

HERE = os.path.dirname(os.path.abspath(__file__))
FRACTIONS = (0.05, 0.2)
TEXT = {"model.item_repr": "text"}
TOWERS = {"frozen": {}, "lora": {"model.text.tune": "lora", "model.text.tune_layers": 6, "model.text.lora_rank": 8},
          "full_top": {"model.text.tune": "full", "model.text.tune_layers": 1},
          "full": {"model.text.tune": "full", "model.text.tune_layers": 6}}


def rows(towers: dict) -> list:
  """The study's rows: a fresh ID model, then adaptor_only and full_finetune with each tower."""
  return [("scratch", {"experiment.variant": "id"})] + [
      (strategy, {**TEXT, **fields, "experiment.variant": f"text:{tower}"})
      for strategy in ("adaptor_only", "full_finetune") for tower, fields in towers.items()]


def get_config(arg=None):
  c = load_config_module(os.path.join(HERE, "..", "real_data", "text.py")).get_config(arg or "ml1m_cross_genre,full")
  pretrain = c.experiment.pretrain
  if "model" not in pretrain:
    pretrain.model = ml_collections.ConfigDict()
  pretrain.model.item_repr = "text"  # one text model pretrained per seed, its tower frozen
  pretrain.model.text = ml_collections.ConfigDict(dict(tune="", tune_layers=1, lora_rank=8))
  return c


def sweep():
  return strategy_variants_grid(rows(TOWERS), "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "experiment.variant"}
