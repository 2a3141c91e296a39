"""How many short target users a pretrained generator would lengthen (data.synthesis), per
confidence threshold and target user fraction, without training anything.

  python experiments/real_data/synthesis_probe.py runs/ml1m_cross_region_cpu/stages/<pretrain stage>

The stage is a finished pretraining of a real-data study (its results.json names the data); the
settings are augment.py's (up to 5 items, users with fewer than 30 training items, forward).
"""

import json
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from xrec import runfiles  # noqa: E402
from xrec.data import pipeline  # noqa: E402
from xrec.train import checkpoint as ckpt  # noqa: E402
from xrec.train import synthesis  # noqa: E402


def main(stage: str, fractions=(0.05, 0.2, 1.0), confidences=(0.05, 0.02, 0.0)) -> None:
  with open(os.path.join(stage, "results.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  module, _ = runfiles.build_encoder(stage)
  params, _ = ckpt.restore_best_params(stage)
  keys = runfiles.read_item_keys(stage)
  for fraction in fractions:
    data = config.data.copy_and_resolve_references()
    data.domain, data.user_fraction, data.fraction_seed = "target", fraction, 0
    domain = pipeline.load_domain(data)
    for confidence in confidences:
      cfg = ml_collections.ConfigDict(dict(num_items=5, min_len=30, confidence=confidence, direction="forward",
                                           model=""))
      _, report = synthesis.generate(module, params, keys, domain, cfg)
      print(json.dumps({"user_fraction": fraction, "confidence": confidence,
                        **{k: report[k] for k in ("short_users", "users_lengthened", "items_added", "mean_confidence")}}),
            flush=True)


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit(__doc__)
  main(sys.argv[1])
