"""Cross-region scenario on MovieLens-1M: same movies, disjoint users split by US region.

A user's region is the first digit of the zip code (0 New England ... 9 Pacific).
Source = regions 0-4 (East and Midwest), target = regions 5-9 (Central, Mountain,
West and Pacific). Zips that do not start with a digit (non-US, e.g. Canadian) and
empty ones are in neither domain; the counts per region are in the statistics.
Each domain is preprocessed on its own (users with >= 3 ratings).

Data: like configs/sasrec_ml1m.py (ml-1m.zip downloaded, or placed in
$XREC_DATA_DIR/manual/ or --config.data.movielens.manual_dir).

Commands (pretrain on the source, train on the target; `data.user_fraction` for few-shot):

  python -m xrec.data.stats --config configs/ml1m_cross_region.py
  python launch.py --config configs/ml1m_cross_region.py --workdir runs/ml1m_region/source
  python launch.py --config configs/ml1m_cross_region.py --config.data.domain=target \
      --config.data.user_fraction=0.1 --workdir runs/ml1m_region/target_10pct

`configs/ml1m_cross_region.py:swap` exchanges the sides (source = 5-9, target = 0-4).
"""

from xrec.defaults import base_config

EAST = ("0", "1", "2", "3", "4")
WEST = ("5", "6", "7", "8", "9")


def get_config(arg=None):
  if arg not in (None, "", "swap"):
    raise ValueError(f"Unknown config argument {arg!r}; valid: 'swap' or none")
  c = base_config()
  c.data.name = "movielens"
  c.data.movielens.release = "1m"
  c.data.domain = "source"
  source, target = (WEST, EAST) if arg == "swap" else (EAST, WEST)
  c.data.scenario.update(dict(kind="user_attribute", attribute="region", source_values=source,
                              target_values=target))
  c.model.max_len = 200
  c.model.sasrec.num_heads = 1
  c.objective.terms = (("full_softmax", 1.0),)
  c.eval.mask_history = True
  c.train.num_epochs = 100.0
  c.train.early_stopping_patience = 10
  return c
