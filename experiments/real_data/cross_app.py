"""Strategies x target fraction across two interaction files (cross-app: items matched by raw key).

Source = one interaction file (data.files.*), target = another (data.scenario.target_files.*),
both in the layout the config argument names (configs/sasrec_interactions.py: sasrec, s3rec,
recbole, amazon2018, amazon2023, amazon2023_reviews; docs/datasets.md). Items and users are matched
by raw key; the overlap is reported in each transfer's results.json. Grid: scratch, zero_shot,
full_finetune, frozen_encoder, adapter, lora x target user fraction 0.05, 0.2, 1.0 x seeds 0, 1, 2.

  python launch.py --config experiments/real_data/cross_app.py:amazon2018 \
      --config.data.files.path=/data/ratings_Books.csv \
      --config.data.scenario.target_files.path=/data/ratings_Movies_and_TV.csv \
      --workdir runs/cross_app_books_movies
  python -m xrec.report runs/cross_app_books_movies

Expected numbers: not yet run.
"""

from configs.sasrec_interactions import get_config as files_config
from xrec.train.sweep import as_transfer_study, strategy_grid

STRATEGIES = ("scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter", "lora")
FRACTIONS = (0.05, 0.2, 1.0)
SEEDS = (0, 1, 2)


def get_config(arg=None):
  c = files_config(arg)  # the source file's layout and preprocessing
  c.data.scenario.kind = "cross_app"
  c.data.scenario.target_name = "interactions"
  c.data.scenario.target_files.update(c.data.files.to_dict())  # the target file has the same layout
  return as_transfer_study(c, pretrain_epochs=200.0)


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
