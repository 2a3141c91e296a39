"""The model zoo on the built-in synthetic data: every encoder against popularity.

One-domain runs on the source domain of the default synthetic cross-region scenario (3,000 users x
1,000 items): popularity, SASRec, BERT4Rec (cloze objective), GRU4Rec, NextItNet and HSTU, and
SASRec with items by their text (ID-free "text" and "text+id", through wordllama), d = 64, the
same budget of 600 optimizer steps of batch 128 with validation every 100 steps and early stopping,
each encoder's learning rate chosen on validation from {1e-3, 3e-3, 1e-2}. Full ranking over all
items with history masked, leave-one-out by time, evaluated on all 3,000 users. One seed: the
report's intervals and tests are per-user paired bootstraps.

  python launch.py --config experiments/model_zoo/config.py --workdir runs/model_zoo
  python -m xrec.report runs/model_zoo

Measured numbers, throughput and wall time: experiments/model_zoo/README.md.
"""

from xrec.defaults import base_config

MODELS = ("popularity", "sasrec", "bert4rec", "gru4rec", "nextitnet")
# SASRec with items by their text (issue 14): ID-free (text) and text + ID, the item text through
# wordllama (the default synthetic data's item text, text_signal 0.8)
TEXT_MODELS = ("text", "text+id")


def get_config(arg=None):
  del arg
  c = base_config()
  c.experiment.mode = "single"
  c.data.domain = "source"
  c.train.update(dict(num_steps=600, batch_size=128, eval_every_steps=100, checkpoint_every_steps=300,
                      early_stopping_patience=3, progress_bar=False))
  c.tune.lr = (1e-3, 3e-3, 1e-2)
  # BERT4Rec (read by no other model): every prefix of a history is a "predict the newest item"
  # example (cloze.prefix_prob, the default 1.0) and few interior positions are masked; on these
  # short sequences (mean 20) the paper's 20% left it at the popularity level (README)
  c.objective.cloze.mask_prob = 0.01
  return c


def sweep():
  for name in MODELS:
    yield {"model.name": name}
  for repr_ in TEXT_MODELS:
    yield {"model.name": "sasrec", "model.item_repr": repr_, "model.text.encoder": "wordllama",
           "experiment.variant": repr_}
  # HSTU (issue 30) after the rows that ran first, so that their cell indices stay what the
  # README's commands name
  yield {"model.name": "hstu"}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "rows": "model.name", "columns": (),
          "row_detail": "experiment.variant"}
