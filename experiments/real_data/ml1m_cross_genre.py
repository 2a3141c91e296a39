"""Strategies x target fraction on MovieLens-1M cross-genre (same users, disjoint movies by genre).

The scenario and data are those of configs/ml1m_cross_genre.py (source = the "thrill" genres,
target = the others; ml-1m.zip as for configs/sasrec_ml1m.py). The domains share no movie, so the
item table of the target starts fresh (transfer.unseen_items) and zero_shot is left out. Grid:
scratch, full_finetune, frozen_encoder, adapter, lora x target user fraction 0.05, 0.2, 1.0 x
seeds 0, 1, 2; one pretraining per seed.

  python launch.py --config experiments/real_data/ml1m_cross_genre.py --workdir runs/ml1m_cross_genre
  python -m xrec.report runs/ml1m_cross_genre

`:first` assigns multi-genre movies by their first genre. Expected numbers: not yet run.
"""

from configs.ml1m_cross_genre import get_config as scenario_config
from xrec.train.sweep import as_transfer_study, strategy_grid

STRATEGIES = ("scratch", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)


def get_config(arg=None):
  c = scenario_config(arg)
  return as_transfer_study(c, pretrain_epochs=100.0)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
