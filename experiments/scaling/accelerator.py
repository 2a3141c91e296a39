"""The scaling study (config.py here) at accelerator sizes: max_len 200 and sizes (d, blocks) up to
(512,8) and (1024,8) beside the CPU preset's, for both families (SASRec and HSTU); same scenarios,
strategies, fractions and seeds.

  python launch.py --config experiments/scaling/accelerator.py:ml1m_cross_region --workdir runs/scaling_ml1m_gpu
  python experiments/scaling/analyze.py runs/scaling_ml1m_gpu
"""

import os

from xrec.train.runner import load_config_module

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))


def get_config(arg=None):
  return _study.study_config(arg, "accelerator")


def sweep():
  return _study.grid("accelerator")


def metrics():
  return _study.metrics()
