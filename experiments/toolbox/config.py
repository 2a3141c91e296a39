"""Adversarial and multi-domain transfer against fine-tuning, at a small and a large domain shift.

On the fraction study's synthetic cross-region setting (experiments/fraction_study/config.py:
1,500 users per domain over the same 500 items, SASRec d = 32) with the generator's shift at
0.25 and 0.75, 5% of the target's users train (75) and all 1,500 are evaluated. Strategies:
scratch, full_finetune, dann (domain-adversarial: source and target batches, a discriminator
through gradient reversal), shared_private (dann plus a private encoder per domain and an
orthogonality term) and multi_domain (shared_bottom: one model for both domains with per-domain
heads). Same 1,000-step budget, early stopping and learning-rate grid as the fraction
study, 5 seeds, Holm-corrected paired tests.

  python launch.py --config experiments/toolbox/config.py --workdir runs/toolbox
  python -m xrec.report runs/toolbox

Measured numbers: experiments/toolbox/README.md.
"""

import os

from xrec.train.runner import SEEDS, load_config_module, strategy_grid

# the shift study's setting and report layout (the fraction study's data, model, budget, 5% of users)
SHIFT_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shift_study", "config.py")
STRATEGIES = ("scratch", "full_finetune", "dann", "shared_private", "multi_domain")
SHIFTS = (0.25, 0.75)

_shift_study = load_config_module(SHIFT_STUDY)
get_config = _shift_study.get_config
metrics = _shift_study.metrics


def sweep():
  return strategy_grid(STRATEGIES, "data.synthetic.shift", SHIFTS, SEEDS)
