"""SASRec on MovieLens-1M with the published protocol (Klenitskiy & Vasilev, RecSys 2023).

Protocol: every rating is an interaction (no threshold), users with >= 3 ratings
(MovieLens-1M has >= 20 each), chronological leave-one-out (last item test,
second-to-last validation), max_len 200, full cross-entropy over all items,
full ranking over the whole catalogue with the user's history masked.

Data: online, ml-1m.zip is downloaded from GroupLens and checksum-verified. Offline, put
ml-1m.zip (https://files.grouplens.org/datasets/movielens/ml-1m.zip) into
$XREC_DATA_DIR/manual/ (default ~/.cache/xrec/datasets/manual/), or extract it there
(…/manual/ml-1m/ratings.dat), or point --config.data.movielens.manual_dir at its folder.

Command:

  python launch.py --config configs/sasrec_ml1m.py --workdir runs/sasrec_ml1m

Reference (paper, full CE, max_len 200): test NDCG@10 = 0.182, HR@10 = 0.315. Dataset statistics:
`python -m xrec.data.stats --config configs/sasrec_ml1m.py` (6,040 users, 3,706 items, 1,000,209 ratings).
"""

from xrec.defaults import base_config


def get_config(arg=None):
  if arg not in (None, ""):
    raise ValueError(f"Unknown config argument {arg!r}; sasrec_ml1m takes none")
  c = base_config()
  c.data.name = "movielens"
  c.data.movielens.release = "1m"
  c.data.domain = "main"
  c.data.preprocess.min_seq_len = 3
  c.model.max_len = 200
  c.model.embed_dim = 64
  c.model.sasrec.update(dict(num_layers=2, num_heads=1, mlp_dim=64))
  c.model.dropout = 0.2
  c.objective.terms = (("full_softmax", 1.0),)
  c.eval.mask_history = True
  c.train.batch_size = 128
  c.train.num_epochs = 200.0
  c.train.eval_every_steps = 500
  c.train.checkpoint_every_steps = 500
  c.train.early_stopping_patience = 10
  return c
