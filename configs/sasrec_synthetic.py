"""SASRec on the built-in synthetic data (source domain of the cross-region scenario).

Command (the README's quick start; about 3-4 minutes on 2 CPU cores):

  python launch.py --config configs/sasrec_synthetic.py --workdir runs/sasrec_synthetic

Expected (measured, see README): test NDCG@10 ~0.40 vs popularity ~0.05.
Switches via the config argument: `configs/sasrec_synthetic.py:bce` uses the
original SASRec loss (BCE, one negative), `:sampled` a logQ-corrected sampled softmax.
"""

from xrec.config import base_config


def get_config(arg=None):
  c = base_config()
  c.train.num_epochs = 20.0
  c.train.eval_every_steps = 100
  c.train.checkpoint_every_steps = 100
  if arg == "bce":
    c.objective.terms = (("bce", 1.0),)
  elif arg == "sampled":
    c.objective.terms = (("sampled_softmax", 1.0),)
  elif arg not in (None, ""):
    raise ValueError(f"Unknown config argument {arg!r}; valid: 'bce', 'sampled' or none")
  return c
