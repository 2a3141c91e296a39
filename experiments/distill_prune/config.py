"""The cost of serving a pretrained model: distillation into small students and pruning.

On the fraction study's synthetic cross-region setting (experiments/fraction_study/config.py), the
pretrained model is a SASRec with d = 64 (the teacher; experiment.pretrain overrides the width),
and 20% of the target's users train (300), all 1,500 evaluated. Columns: the model's width
(model.embed_dim 16, 32, 64). Rows: scratch (trained on the target alone) and distill (a fresh
model of that width trained from the pretrained teacher's logits and top-10 ranking) at every
width; at 64, the teacher's own width, also full_finetune (the teacher fine-tuned) and prune (the
teacher fine-tuned while pruned to 50%: prune:magnitude of its blocks' weights, prune:heads of its
attention heads, prune:items of its coldest items, prune:dims of its item tables' dims, the last
three served as smaller dense models).
A plot puts quality against the served model's evaluation users/s. Same 1,000-step budget,
learning-rate grid and 5 seeds as the fraction study; results.json records params, stored bytes and
evaluation users/s of every model (the teacher's under transfer.teacher, the pruned model's under
pruning).

  python launch.py --config experiments/distill_prune/config.py --workdir runs/distill_prune
  python -m xrec.report runs/distill_prune
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, load_config_module

FRACTION_STUDY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fraction_study", "config.py")
WIDTHS = (16, 32, 64)


def get_config(arg=None):
  del arg
  c = load_config_module(FRACTION_STUDY).synthetic_study_config()
  c.data.user_fraction = 0.2
  c.experiment.pretrain.model = ml_collections.ConfigDict({"embed_dim": 64})  # the teacher
  c.transfer.distill.update(dict(logit_weight=1.0, ranking_weight=0.5))
  c.transfer.prune.update(dict(kind="magnitude", ratio=0.5, events=3, start=0.0, end=0.5))
  return c


PRUNE_KINDS = ("magnitude", "heads", "items", "dims")


def sweep():
  for seed in SEEDS:
    for width in WIDTHS:
      rows = [("scratch", {}), ("distill", {})]
      if width == 64:
        rows += [("full_finetune", {})] + [("prune", {"transfer.prune.kind": k}) for k in PRUNE_KINDS]
      for strategy, extra in rows:
        yield {"transfer.strategy": strategy, **extra, "model.embed_dim": width, "seed": seed,
               "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "model.embed_dim", "row_detail": "transfer.prune.kind",
          "speed_plot": True}
