"""Overlapping users on real data: does reading the user's source history help? scratch,
full_finetune (target history only), cross_user:merged and cross_user:prefix x target user
fraction 0.05, 0.2, 1.0 x seeds 0-4. Needs users present in both domains: ml1m_cross_genre (the same
users, disjoint movies) or cross_app with two files that share user keys (e.g. two Amazon
categories); ml1m_cross_region has disjoint users and fails naming that. Protocol and budgets as
in the scenario's study file.

  python launch.py --config experiments/real_data/overlap.py:ml1m_cross_genre,cpu \\
      --workdir runs/overlap_ml1m_cross_genre
  python launch.py --config experiments/real_data/overlap.py:cross_app,amazon2018 \\
      --config.data.files.path=/data/ratings_Books.csv \\
      --config.data.scenario.target_files.path=/data/ratings_Movies_and_TV.csv \\
      --workdir runs/overlap_books_movies
  python -m xrec.report runs/overlap_ml1m_cross_genre

Expected numbers: not yet run on the real archives (no internet here).
"""

import os

from xrec.train.runner import SEEDS, real_data_scenario, strategy_variants_grid

ROWS = (("scratch", {}), ("full_finetune", {}), ("cross_user", {"transfer.cross_user.mode": "merged"}),
        ("cross_user", {"transfer.cross_user.mode": "prefix"}))
FRACTIONS = (0.05, 0.2, 1.0)


def get_config(arg=None):
  return real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))


def sweep():
  return strategy_variants_grid(ROWS, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction",
          "row_detail": "transfer.cross_user.mode"}
