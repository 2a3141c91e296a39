"""The selection study's pipeline in minutes (config.py at toy size: 1 target, SASRec and GRU4Rec at
embed 16, 1 seed, one learning rate). It checks that the study and analyze.py run; it answers
nothing.

  python launch.py --config experiments/selection/smoke.py --workdir runs/selection_smoke
  python experiments/selection/analyze.py runs/selection_smoke
"""

import os

from xrec.train.runner import load_config_module

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))
metrics = _study.metrics


def get_config(arg=None):
  c = _study.get_config(arg)
  c.data.synthetic.update(dict(num_source_users=200, num_target_users=200, num_source_items=100,
                               num_target_items=100, mean_seq_len=10.0, max_seq_len=30))
  c.data.user_fraction = 0.5
  c.model.update(dict(max_len=20, vocab_multiple=8))
  c.model.sasrec.update(dict(num_layers=1, num_heads=1, mlp_dim=32))
  c.experiment.pretrain.train.update(dict(num_epochs=3.0, batch_size=32, eval_every_steps=10,
                                          checkpoint_every_steps=10))
  c.train.update(dict(num_steps=20, eval_every_steps=10, checkpoint_every_steps=10))
  c.tune.lr = (3e-3,)
  return c


def sweep():
  return _study.grid(encoders=("sasrec", "gru4rec"), sizes=(16,), shifts=(0.25,), seeds=(0,))
