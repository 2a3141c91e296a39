"""Strategies x target fraction on MovieLens-1M cross-region (same movies, disjoint users by US region).

The scenario and data are those of configs/ml1m_cross_region.py (source = zip regions 0-4,
target = 5-9; ml-1m.zip downloaded, or placed in $XREC_DATA_DIR/manual/ or
--config.data.movielens.manual_dir). Grid: scratch, zero_shot, full_finetune, frozen_encoder,
adapter, lora x target user fraction 0.05, 0.2, 1.0 x seeds 0, 1, 2; one pretraining per seed.

  python launch.py --config experiments/real_data/ml1m_cross_region.py --workdir runs/ml1m_cross_region
  python -m xrec.report runs/ml1m_cross_region

`:swap` exchanges the sides (pretrain on regions 5-9). Expected numbers: not yet run.
"""

from configs.ml1m_cross_region import get_config as scenario_config
from xrec.train.sweep import as_transfer_study, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)


def get_config(arg=None):
  c = scenario_config(arg)
  return as_transfer_study(c, pretrain_epochs=100.0)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
