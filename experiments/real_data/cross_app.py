"""Strategies x target fraction across two interaction files (cross-app: items matched by raw key).

Source = one interaction file (data.files.*), target = another (data.scenario.target_files.*),
both in the layout the config argument names (configs/sasrec_interactions.py: sasrec, s3rec,
recbole, amazon2018, amazon2023, amazon2023_reviews; docs/datasets.md). Items and users are matched
by raw key; the item overlap (items and share of target interactions) is in every result, and
with little overlap zero_shot is n/a and the parameter-efficient presets train the item tables.
Grid: scratch, zero_shot, full_finetune, frozen_encoder, adapter, lora x target user fraction
0.05, 0.2, 1.0 x seeds 0-4. Protocol as in ml1m_cross_region.py.

  python launch.py --config experiments/real_data/cross_app.py:amazon2018 \
      --config.data.files.path=/data/ratings_Books.csv \
      --config.data.scenario.target_files.path=/data/ratings_Movies_and_TV.csv \
      --workdir runs/cross_app_books_movies
  python -m xrec.report runs/cross_app_books_movies

Arguments (comma-separated): the layout (one of the formats above, default sasrec) and `cpu` /
`full` (default) the budget preset (xrec/train/runner.py REAL_DATA_PRESETS), e.g.
`cross_app.py:amazon2018,cpu`. Expected numbers: not yet run (no third-party data here).
`one_pretraining` pretrains one source model (seed 0) for every seed's cells instead of one per seed (runner.as_transfer_study).
"""

from configs.sasrec_interactions import FORMATS
from configs.sasrec_interactions import get_config as files_config
from xrec.train.runner import ONE_PRETRAINING, SEEDS, as_transfer_study, config_args, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)


def get_config(arg=None):
  args = config_args(arg, FORMATS + ("cpu", "full", ONE_PRETRAINING))
  formats = sorted(args & set(FORMATS))
  if len(formats) > 1:
    raise ValueError(f"pick one file layout of {list(FORMATS)}, got {formats}")
  c = files_config(formats[0] if formats else None)  # the source file's layout and preprocessing
  c.data.scenario.kind = "cross_app"
  c.data.scenario.target_name = "interactions"
  c.data.scenario.target_files.update(c.data.files.to_dict())  # the target file has the same layout
  return as_transfer_study(c, "cpu" if "cpu" in args else "full", one_pretraining=ONE_PRETRAINING in args)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
