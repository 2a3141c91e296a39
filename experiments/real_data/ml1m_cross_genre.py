"""Strategies x target fraction on MovieLens-1M cross-genre (same users, disjoint movies by genre).

The scenario and data are those of configs/ml1m_cross_genre.py (source = the "thrill" genres,
target = the others; ml-1m.zip as for configs/sasrec_ml1m.py). The domains share no movie: the
target's item rows start as fresh random rows on the pretrained rows' scale
(transfer.unseen_items="random"), the parameter-efficient presets train the item tables
(transfer.train_item_embeddings="auto": the overlap is below transfer.min_item_overlap) and
zero_shot is reported n/a (it would rank unseen movies arbitrarily); the results say so. Grid:
scratch, zero_shot, full_finetune, frozen_encoder, adapter, lora x target user fraction 0.05,
0.2, 1.0 x seeds 0-4; one pretraining per seed. Protocol as in ml1m_cross_region.py.

  python launch.py --config experiments/real_data/ml1m_cross_genre.py --workdir runs/ml1m_cross_genre
  python launch.py --config experiments/real_data/ml1m_cross_genre.py:cpu --workdir runs/ml1m_cross_genre_cpu
  python -m xrec.report runs/ml1m_cross_genre

Arguments (comma-separated): `first` assigns multi-genre movies by their first genre; `cpu` /
`full` (default) the budget preset (xrec/train/runner.py REAL_DATA_PRESETS). Expected numbers: not
yet run on the real archive.
`one_pretraining` pretrains one source model (seed 0) for every seed's cells instead of one per seed (runner.as_transfer_study).
"""

from configs.ml1m_cross_genre import get_config as scenario_config
from xrec.train.runner import ONE_PRETRAINING, SEEDS, as_transfer_study, config_args, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)


def get_config(arg=None):
  args = config_args(arg, ("first", "cpu", "full", ONE_PRETRAINING))
  c = scenario_config("first" if "first" in args else None)
  return as_transfer_study(c, "cpu" if "cpu" in args else "full", one_pretraining=ONE_PRETRAINING in args)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
