"""Transfer without shared items: items by their text vs a fresh ID model (issue 14).

The fraction study's synthetic setting (experiments/fraction_study/config.py: 1,500 users per
domain, 500 items, SASRec d = 32) on a new store: the cross-region scenario with
data.synthetic.item_overlap = 0, so the source and the target share neither users nor items (only
the world's topics, which the items' text words name: data.synthetic.text_signal 0.8). Item text
goes through `wordllama` (WordLlama's static token embeddings, installed with the package). 1%, 5%
or 20% of the target's users train (15, 75, 300); all 1,500 are evaluated. Rows (experiment.variant
labels the item representation):
  scratch                   a fresh ID model on the target alone
  scratch:text              a text model (model.item_repr=text) on the target alone
  zero_shot:text            the source-pretrained text model on the target's catalogue, untrained
  adaptor_only:text         ... only its mixture-of-experts adaptor fine-tuned
  full_finetune:text        ... fine-tuned whole
  full_finetune:text+id     a text + ID model pretrained on the source, fine-tuned whole (the
                            target's ID rows start fresh: no item is shared)
Same 1,000-step budget, learning-rate grid and 5 seeds as the fraction study, Holm-corrected paired
tests (every row against scratch). signal.py sweeps the text signal.

  python launch.py --config experiments/text_transfer/config.py --workdir runs/text_transfer
  python -m xrec.report runs/text_transfer
"""

import os

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
FRACTIONS = (0.01, 0.05, 0.2)
TEXT = {"model.item_repr": "text"}
ROWS = (
    ("scratch", "", {}),
    ("scratch", "text", TEXT),
    ("zero_shot", "text", TEXT),
    ("adaptor_only", "text", TEXT),
    ("full_finetune", "text", TEXT),
    ("full_finetune", "text+id", {"model.item_repr": "text+id"}),
)


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.synthetic.update(dict(item_overlap=0.0, text_signal=0.8))
  c.model.text.encoder = "wordllama"
  return c


def grid(rows=ROWS, field="data.user_fraction", values=FRACTIONS, seeds=SEEDS):
  for seed in seeds:
    for value in values:
      for strategy, variant, extra in rows:
        cell = {"transfer.strategy": strategy, **extra, field: value, "seed": seed, "data.fraction_seed": seed}
        if variant:
          cell["experiment.variant"] = variant
        yield cell


def sweep():
  return grid()


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "experiment.variant"}
