"""The model zoo on the built-in synthetic data: every encoder against popularity.

One-domain runs on the source domain of the default synthetic cross-region scenario (3,000 users x
1,000 items): popularity, SASRec, BERT4Rec (cloze objective), GRU4Rec and NextItNet, d = 64, the
same budget of 2,000 optimizer steps of batch 128 (about 85 epochs) with validation every 200 steps
and early stopping after 3 evaluations without gain, each encoder's learning rate chosen on
validation from {3e-3, 1e-2, 3e-2} (a first run at 600 steps and {1e-3, 3e-3, 1e-2} picked 1e-2,
the grid's edge, for every encoder, and left BERT4Rec, whose cloze objective gives few targets per
sequence, at the popularity level). Full ranking over all
items with history masked, leave-one-out by time, evaluated on all 3,000 users. One seed: the
report's intervals and tests are per-user paired bootstraps.

  python launch.py --config experiments/model_zoo/config.py --workdir runs/model_zoo
  python -m xrec.report runs/model_zoo

Measured numbers, throughput and wall time: experiments/model_zoo/README.md.
"""

from xrec.config import base_config

MODELS = ("popularity", "sasrec", "bert4rec", "gru4rec", "nextitnet")


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "single"
  c.data.domain = "source"
  c.train.update(dict(num_steps=2000, batch_size=128, eval_every_steps=200, checkpoint_every_steps=1000,
                      early_stopping_patience=3, progress_bar=False))
  c.tune.lr = (3e-3, 1e-2, 3e-2)
  return c


def sweep():
  for name in MODELS:
    yield {"model.name": name}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "rows": "model.name", "columns": ()}
