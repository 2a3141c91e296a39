"""The selection study's zoo, widened to sources at several shifts from the target (issue 13).

config.py's 8 checkpoints were all pretrained on one source (the three synthetic settings share
their source domain), so it measures how an estimator orders architectures, not sources. Here the
same 8 architectures are also pretrained on the *target* domains of the two other settings: the
generator moves every setting's target away from the common source by its shift along the same
random directions, so the target at shift 0.5 lies between the source and the target at 0.75, and
the target at 0.25 between the source and the one at 0.5. For the target at shift Y, the new
candidates are the 8 architectures pretrained on the targets at the two other shifts (all 1,500
users each; the same 500 item keys, so every item is shared): 16 candidates per target that,
with config.py's 8, make a zoo of 24 from three sources at different distances.
Cells: 3 targets x 16 candidates x seeds 0-4 (240), under config.py's protocol (5% of the
target's users train, 1,000-step budget, learning rate tuned on validation); 24 pretrainings.

  python launch.py --config experiments/selection/sources.py --workdir runs/selection_sources
  python experiments/selection/analyze.py runs/selection_sources
  python experiments/selection/analyze.py --merge runs/selection_all \\
      runs/selection/selection/selection.json runs/selection_sources/selection/selection.json

(the merge puts each target's 8 + 16 candidates together: both studies name their targets by
shift and seed.)
"""

import os

from xrec.train.runner import SEEDS, load_config_module

_study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config.py"))
SHIFTS = _study.SHIFTS


def get_config(arg=None):
  c = _study.get_config(arg)
  with c.experiment.pretrain.data.unlocked():
    c.experiment.pretrain.data.synthetic = dict(shift=0.0)  # set per cell: the source's setting
  return c


def sweep(seeds=SEEDS):
  for seed in seeds:
    for shift in SHIFTS:
      for source in SHIFTS:
        if source == shift:
          continue
        for encoder in _study.ENCODERS:
          for size in _study.SIZES:
            yield {"data.synthetic.shift": shift, "experiment.source_domain": "target",
                   "experiment.pretrain.data.synthetic.shift": source, "model.name": encoder,
                   "model.embed_dim": size, "seed": seed, "data.fraction_seed": seed}


def metrics():
  return {"metrics": ("ndcg@10",), "columns": "data.synthetic.shift", "rows": "model.name",
          "row_detail": "experiment.pretrain.data.synthetic.shift"}
