"""Adversarial and multi-domain transfer on real data: scratch, full_finetune, dann, shared_private
and multi_domain at 5% of the target's users x seeds 0-4, on one of the real-data scenarios (the
argument: ml1m_cross_region, ml1m_cross_genre or cross_app, then that scenario's own arguments).
Protocol and budgets as in the scenario's study file (ml1m_cross_region.py).

The real counterpart of experiments/toolbox (75 training users, two domain shifts over the same
items): one fraction, 5% (ML-1M cross-region: 164 users), 25 cells where three fractions made 75.
Add fractions to FRACTIONS for a fraction curve. dann, shared_private and multi_domain train on the
source's users in the target's item ids (the source stream), so the domains must share items:
cross-region (the same movies) does; on cross-genre (disjoint movies) or two S3Rec files those
cells fail naming their terms, and scratch / full_finetune run alone.

  python launch.py --config experiments/real_data/adversarial.py:ml1m_cross_region,cpu \\
      --workdir runs/adversarial_ml1m_cross_region
  python -m xrec.report runs/adversarial_ml1m_cross_region

Expected numbers: not yet run on the real archives (no internet here).
"""

import os

from xrec.train.runner import SEEDS, real_data_scenario, strategy_grid

STRATEGIES = ("scratch", "full_finetune", "dann", "shared_private", "multi_domain")
FRACTIONS = (0.05,)


def get_config(arg=None):
  return real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))


def sweep():
  return strategy_grid(STRATEGIES, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction"}
