"""SASRec on the built-in synthetic data (source domain of the cross-region scenario).

Command (about 2 minutes on 2 CPU cores):

  python launch.py --config configs/sasrec_synthetic.py --workdir runs/sasrec_synthetic

Measured on a 2-core Intel Xeon VM (CPU, jax 0.10.2, commit 92cd21b, 2026-12-01, 112 s): test
NDCG@10 0.3287 (HR@10 0.4790) on all 3,000 users, best step 469 of 469 (the last evaluation: still
improving at the end of 20 epochs); popularity (configs/popularity_synthetic.py) 0.0818.
Switches via the config argument: `configs/sasrec_synthetic.py:bce` uses the
original SASRec loss (BCE, one negative), `:sampled` a logQ-corrected sampled softmax.
"""

from xrec.defaults import base_config


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
