"""SASRec on an interaction file in any supported format (docs/datasets.md).

Put the file anywhere and pass its path; the config argument picks the layout:

  python launch.py --config configs/sasrec_interactions.py:sasrec \
      --config.data.files.path=/data/Beauty.txt --workdir runs/beauty

  :sasrec              `user item` per line (SASRec repo data/*.txt)             [default]
  :s3rec               `user item1 item2 ...` per line (CIKM2020-S3Rec data/*.txt); optional
                       --config.data.files.item_attributes_path=/data/Beauty_item2attributes.json
  :recbole             RecBole atomic .inter (typed header; rating/timestamp used when present)
  :amazon2018          Amazon 2018 ratings-only CSV `item,user,rating,timestamp`, no header
  :amazon2023          Amazon 2023 ratings CSV `user_id,parent_asin,rating,timestamp` (ms), header
  :amazon2023_reviews  Amazon 2023 review JSON lines (user_id, parent_asin, rating, timestamp in ms)

Amazon sources use the common paper preprocessing: 5-core users and items (iterated to a fixed
point) and de-duplicated (user, item) pairs; any rating counts as an interaction. Protocol:
chronological leave-one-out, full ranking with history masked, full cross-entropy, max_len 50.
Statistics: `python -m xrec.data.stats --config configs/sasrec_interactions.py:amazon2018 --config.data.files.path=...`.
"""

from xrec.defaults import base_config

FORMATS = ("sasrec", "s3rec", "recbole", "amazon2018", "amazon2023", "amazon2023_reviews")


def get_config(arg=None):
  arg = arg or "sasrec"
  if arg not in FORMATS:
    raise ValueError(f"Unknown config argument {arg!r}; valid: {list(FORMATS)}")
  c = base_config()
  c.data.name = "interactions"
  c.data.domain = "main"
  f = c.data.files
  if arg in ("sasrec", "s3rec", "recbole"):
    f.format = arg
  elif arg == "amazon2018":
    f.update(dict(format="csv", header=False, item_column="0", user_column="1", rating_column="2",
                  timestamp_column="3", timestamp_unit="s"))
  elif arg == "amazon2023":
    f.update(dict(format="csv", header=True, user_column="user_id", item_column="parent_asin",
                  rating_column="rating", timestamp_column="timestamp", timestamp_unit="ms"))
  else:
    f.update(dict(format="jsonl", user_column="user_id", item_column="parent_asin", rating_column="rating",
                  timestamp_column="timestamp", timestamp_unit="ms"))
  if arg.startswith("amazon"):
    c.data.preprocess.update(dict(user_core=5, item_core=5, dedup="first"))
  c.model.max_len = 50
  c.objective.terms = (("full_softmax", 1.0),)
  c.eval.mask_history = True
  c.train.num_epochs = 200.0
  c.train.early_stopping_patience = 10
  return c
