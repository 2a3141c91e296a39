"""Cross-genre scenario on MovieLens-1M: the same users, disjoint movies split by genre.

Source = movies of the "thrill" genres (Action, Adventure, Crime, Film-Noir, Horror,
Mystery, Sci-Fi, Thriller, War, Western); target = movies of the other genres
(Animation, Children's, Comedy, Documentary, Drama, Fantasy, Musical, Romance).
A user's sequence in each domain is restricted to that domain's movies; users with
< 3 ratings on a side are not in that domain. Multi-genre movies with genres on both
sides (e.g. Action|Comedy) are in neither domain (multi_value_rule='drop', counted in
the statistics); `:first` assigns them by their first listed genre instead.

Data: like configs/sasrec_ml1m.py (ml-1m.zip downloaded, or placed in
$XREC_DATA_DIR/manual/ or --config.data.movielens.manual_dir).

Commands:

  python -m xrec.data.stats --config configs/ml1m_cross_genre.py
  python launch.py --config configs/ml1m_cross_genre.py --workdir runs/ml1m_genre/source
  python launch.py --config configs/ml1m_cross_genre.py --config.data.domain=target --workdir runs/ml1m_genre/target
"""

from xrec.defaults import base_config

THRILL = ("Action", "Adventure", "Crime", "Film-Noir", "Horror", "Mystery", "Sci-Fi", "Thriller", "War", "Western")


def get_config(arg=None):
  if arg not in (None, "", "first"):
    raise ValueError(f"Unknown config argument {arg!r}; valid: 'first' or none")
  c = base_config()
  c.data.name = "movielens"
  c.data.movielens.release = "1m"
  c.data.domain = "source"
  c.data.scenario.update(dict(kind="item_attribute", attribute="genres", source_values=THRILL, target_values=(),
                              multi_value_rule="first" if arg == "first" else "drop"))
  c.model.max_len = 200
  c.model.sasrec.num_heads = 1
  c.objective.terms = (("full_softmax", 1.0),)
  c.eval.mask_history = True
  c.train.num_epochs = 100.0
  c.train.early_stopping_patience = 10
  return c
