"""A minutes-long version of the scaling study (config.py here): the synthetic cross-region
scenario, two tiny sizes ((8,1) and (16,2)), one seed, 20-step budgets. It checks that the grid
launches and that analyze.py fits and plots it; it answers nothing.

  python launch.py --config experiments/scaling/smoke.py --workdir /tmp/scaling_smoke --jobs 2
  python experiments/scaling/analyze.py /tmp/scaling_smoke
"""

import os

from xrec.train.runner import load_config_module

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))


def get_config(arg=None):
  if arg not in (None, ""):
    raise ValueError(f"experiments/scaling/smoke.py takes no argument; got {arg!r}")
  return _study.study_config(None, "smoke")


def sweep():
  return _study.grid("smoke")


def metrics():
  return _study.metrics()
