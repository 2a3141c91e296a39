"""How much must the item text say? The text study (config.py) at 5% of the target's users with
the generator's text signal swept (data.synthetic.text_signal: the share of an item's words drawn
from its own topic): 0 (text says nothing), 0.5, 1 (every word names the topic). Rows: scratch (ID),
zero_shot:text, full_finetune:text. 5 seeds.

  python launch.py --config experiments/text_transfer/signal.py --workdir runs/text_signal
  python -m xrec.report runs/text_signal
"""

import os

from xrec.train.runner import load_config_module

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))
SIGNALS = (0.0, 0.5, 1.0)
ROWS = tuple(r for r in _study.ROWS if (r[0], r[1]) in {("scratch", ""), ("zero_shot", "text"),
                                                         ("full_finetune", "text")})


def get_config(arg=None):
  c = _study.get_config(arg)
  c.data.user_fraction = 0.05
  return c


def sweep():
  return _study.grid(ROWS, "data.synthetic.text_signal", SIGNALS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.synthetic.text_signal", "row_detail": "experiment.variant"}
