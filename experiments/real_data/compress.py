"""Compression on real data: what serving cost does distillation or pruning save, at what quality?

The real counterpart of experiments/distill_prune, in its layout, so that the two tables compare
cell by cell (`python -m xrec.report.compare experiments/distill_prune <this study> --findings`):
20% of the target's users train (the synthetic study's 300 users were 20%), all are evaluated;
columns are the model's width (model.embed_dim 16, 32, 64). Rows: scratch (trained on the target
alone) and distill (a fresh student of that width trained from the pretrained teacher's logits and
top-10 ranking) at every width, so that each student is tested against a scratch model of its own
width; at 64, the teacher's own width (the presets'), also full_finetune and prune:magnitude,
prune:heads, prune:mlp, prune:items and prune:dims (the teacher fine-tuned while pruned to half: of
its blocks' weights by magnitude, or of its heads / MLP channels / coldest items / item-table dims,
served as a smaller dense model; prune:mlp is this study's own, the other four distill_prune's; the
model gets two attention heads where the scenario has one, so that head pruning removes one per
block). Distillation weights as distill_prune's (logits 1.0, top-10 ranking 0.5). 12 cells per
seed, seeds 0-4. The scenario must share most of its items (at least transfer.min_item_overlap of the
target's interactions: ml1m_cross_region, or cross_app with shared items); distillation covers the
items the teacher knows. results.json records params, stored bytes and users/s of each model
(pruning: and of its dense smaller model); a plot puts quality against the served model's users/s.
Protocol and budgets as in the scenario's study file. The teacher's width is fixed when the config
is built (experiment.pretrain.model.embed_dim, the preset's 64), so the narrower students do not
narrow it.

  python launch.py --config experiments/real_data/compress.py:ml1m_cross_region,cpu \\
      --workdir runs/compress_ml1m_cross_region
  python -m xrec.report runs/compress_ml1m_cross_region

Expected numbers: not yet run on the real archives (no internet here).
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, real_data_scenario

WIDTHS = (16, 32, 64)  # experiments/distill_prune's; the last is the teacher's (the presets' model.embed_dim)
PRUNE_KINDS = ("magnitude", "heads", "mlp", "items", "dims")  # distill_prune's four, and mlp
FRACTION = 0.2


def get_config(arg=None):
  c = real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))
  if c.model.embed_dim != WIDTHS[-1]:
    raise ValueError(f"compress.py compares students of widths {list(WIDTHS)} with a teacher of width {WIDTHS[-1]}; "
                     f"the scenario's preset gives model.embed_dim={c.model.embed_dim}")
  c.data.user_fraction = FRACTION
  # the teacher (the pretrained model) keeps the preset's width when a cell narrows the student
  c.experiment.pretrain.model = ml_collections.ConfigDict({"embed_dim": c.model.embed_dim})
  c.transfer.distill.update(dict(logit_weight=1.0, ranking_weight=0.5))  # distill_prune's
  c.transfer.prune.update(dict(ratio=0.5, events=3, start=0.0, end=0.5))
  own = c.model[c.model.name]
  if own.get("num_heads") == 1:  # the MovieLens scenarios' SASRec has one head, and half of one is none:
    own.num_heads = 2  # two heads (teacher and students alike), so that prune:heads removes one per block
  return c


def sweep():
  for seed in SEEDS:
    for width in WIDTHS:
      rows = [("scratch", {}), ("distill", {})]
      if width == WIDTHS[-1]:
        rows += [("full_finetune", {})] + [("prune", {"transfer.prune.kind": k}) for k in PRUNE_KINDS]
      for strategy, extra in rows:
        yield {"transfer.strategy": strategy, **extra, "model.embed_dim": width, "seed": seed,
               "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "model.embed_dim", "row_detail": "transfer.prune.kind",
          "speed_plot": True}
