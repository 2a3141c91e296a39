"""Strategies x target fraction on MovieLens-1M cross-region (same movies, disjoint users by US region).

The scenario and data are those of configs/ml1m_cross_region.py (source = zip regions 0-4,
target = 5-9; ml-1m.zip downloaded, or placed in $XREC_DATA_DIR/manual/ or
--config.data.movielens.manual_dir). Grid: scratch, zero_shot, full_finetune, frozen_encoder,
adapter, lora x target user fraction 0.05, 0.2, 1.0 x seeds 0-4; one pretraining per seed.
Protocol (DESIGN.md): the fraction limits training users only and every cell is evaluated on all
target users; every trained cell gets the same budget in optimizer steps with early stopping;
each strategy's learning rate is tuned per cell on validation; Holm-corrected paired tests.

  python launch.py --config experiments/real_data/ml1m_cross_region.py --workdir runs/ml1m_cross_region
  python launch.py --config experiments/real_data/ml1m_cross_region.py:short --workdir runs/ml1m_cross_region_short
  python -m xrec.report runs/ml1m_cross_region

Arguments (comma-separated): `swap` exchanges the sides (pretrain on regions 5-9); `short` is the
CPU budget preset (xrec/train/runner.py REAL_DATA_PRESETS: max_len 50, d 32, 20 pretraining epochs,
300 target steps), `full` (default) the accelerator one (max_len 200, d 64, 200 epochs with early
stopping, 2,000 target steps). Wall time of `short` on 2 CPU cores: experiments/real_data/README.md.
Expected numbers: not yet run on the real archive (no internet here).
"""

from configs.ml1m_cross_region import get_config as scenario_config
from xrec.train.runner import SEEDS, as_transfer_study, config_args, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)


def get_config(arg=None):
  args = config_args(arg, ("swap", "short", "full"))
  c = scenario_config("swap" if "swap" in args else None)
  return as_transfer_study(c, "short" if "short" in args else "full")


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
