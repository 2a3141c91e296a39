"""Strategies x target fraction on MovieLens-1M cross-region (same movies, disjoint users by US region).

The scenario and data are those of configs/ml1m_cross_region.py (source = zip regions 0-4,
target = 5-9; ml-1m.zip downloaded, or placed in $XREC_DATA_DIR/manual/ or
--config.data.movielens.manual_dir). Grid: scratch, zero_shot, full_finetune, frozen_encoder,
adapter, lora x target user fraction 0.05, 0.2, 1.0 x seeds 0-4; one pretraining per seed.
Protocol (DESIGN.md): the fraction limits training users only and every cell is evaluated on all
target users; every trained cell gets the same budget in optimizer steps with early stopping;
each strategy's learning rate is tuned on validation on seed 0's cell and reused by the other seeds
(the presets' tune once, with successive halving); Holm-corrected paired tests.

  python launch.py --config experiments/real_data/ml1m_cross_region.py --workdir runs/ml1m_cross_region
  python launch.py --config experiments/real_data/ml1m_cross_region.py:cpu --workdir runs/ml1m_cross_region_cpu
  python -m xrec.report runs/ml1m_cross_region

Arguments (comma-separated): `swap` exchanges the sides (pretrain on regions 5-9); `cpu` is the
CPU budget preset (xrec/train/runner.py REAL_DATA_PRESETS: max_len 100, d 64, pretraining to
convergence (up to 200 epochs, early stopping), 1,500 target steps), `full` (default) the
accelerator one (max_len 200, 2,000 target steps). Both use SASRec's reference-code recipe.
`one_pretraining` pretrains one source model (seed 0) for every seed's cells instead of one per seed (runner.as_transfer_study).
Expected numbers: not yet run on the real archive (no internet here).
"""

from configs.ml1m_cross_region import get_config as scenario_config
from xrec.train.runner import ONE_PRETRAINING, SEEDS, as_transfer_study, config_args, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)


def get_config(arg=None):
  args = config_args(arg, ("swap", "cpu", "full", ONE_PRETRAINING))
  c = scenario_config("swap" if "swap" in args else None)
  return as_transfer_study(c, "cpu" if "cpu" in args else "full", one_pretraining=ONE_PRETRAINING in args)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
