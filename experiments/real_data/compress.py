"""Compression on real data: what serving cost does distillation or pruning save, at what quality?

Rows: scratch, full_finetune, distill (a fresh student of width 16 from the pretrained model of the
preset's width as the teacher: the scenario must share most of its items, at least
transfer.min_item_overlap of the target's interactions, so ml1m_cross_region or cross_app with
shared items; distillation covers the items the teacher knows), prune:heads, prune:mlp, prune:items and prune:dims (half of the
heads / MLP channels / coldest items / item-table dims; the model gets two attention heads where the
scenario has one, so that head pruning removes one per block) at 20% of the target's users x seeds
0-4 (the real counterpart of experiments/distill_prune, which measured 300 training users: one
fraction, 35 cells where two made 70; add fractions to FRACTIONS for more). results.json records params, stored bytes and users/s of each model (pruning: and of its
dense smaller model); a plot puts quality against the served model's users/s. Protocol and
budgets as in the scenario's study file. The pretrained model's width is fixed when the config is
built (experiment.pretrain.model.embed_dim, so that the distill cells' narrower student does not
narrow its teacher): to change the width, set it and model.embed_dim together.

  python launch.py --config experiments/real_data/compress.py:ml1m_cross_region,cpu \\
      --workdir runs/compress_ml1m_cross_region
  python -m xrec.report runs/compress_ml1m_cross_region

Expected numbers: not yet run on the real archives (no internet here).
"""

import os

import ml_collections

from xrec.train.runner import SEEDS, real_data_scenario, strategy_variants_grid

ROWS = (("scratch", {}), ("full_finetune", {}), ("distill", {"model.embed_dim": 16}),
        ("prune", {"transfer.prune.kind": "heads"}), ("prune", {"transfer.prune.kind": "mlp"}),
        ("prune", {"transfer.prune.kind": "items"}), ("prune", {"transfer.prune.kind": "dims"}))
FRACTIONS = (0.2,)


def get_config(arg=None):
  c = real_data_scenario(arg, os.path.dirname(os.path.abspath(__file__)))
  # the teacher (the pretrained model) keeps the preset's width when a cell narrows the student
  c.experiment.pretrain.model = ml_collections.ConfigDict({"embed_dim": c.model.embed_dim})
  c.transfer.prune.update(dict(ratio=0.5, events=3, start=0.0, end=0.5))
  own = c.model[c.model.name]
  if own.get("num_heads") == 1:  # the MovieLens scenarios' SASRec has one head, and half of one is none:
    own.num_heads = 2  # two heads (teacher and students alike), so that prune:heads removes one per block
  return c


def sweep():
  return strategy_variants_grid(ROWS, "data.user_fraction", FRACTIONS, SEEDS)


def metrics():
  return {"metrics": ("ndcg@10", "hr@10"), "columns": "data.user_fraction", "row_detail": "transfer.prune.kind",
          "speed_plot": True}
