"""Popularity baseline on the same data and protocol as configs/sasrec_synthetic.py.

  python launch.py --config configs/popularity_synthetic.py --workdir runs/popularity_synthetic
"""

from xrec.defaults import base_config


def get_config(arg=None):
  del arg
  c = base_config()
  c.model.name = "popularity"
  return c
