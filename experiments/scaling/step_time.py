"""Seconds per training step of each CPU size of the scaling study, to size its budget.

xrec's jitted step (experiments/bench/bench.py's bench_xrec: full-length random batches of 128, full
softmax over ML-1M cross-region's 3,629 target movies, fp32) at each (d, blocks) of config.py's `cpu`
preset (max_len 50), for SASRec and HSTU (the study's two families), beside the real-data `cpu`
preset's model (SASRec d 64 x 2 blocks, feed-forward 64, the reference block, max_len 100) whose
cells have measured wall times, all steps timed in the same alternating rounds; plus one
full-ranking evaluation batch of 256 users.
Real batches are shorter than full length (the step computes only predicted positions), so these are
upper bounds; their ratios are what the budget estimate uses. Run it single-threaded on one core:

  XLA_FLAGS=--xla_cpu_multi_thread_eigen=false \\
      taskset -c 1 python experiments/scaling/step_time.py --out experiments/scaling/step_time.json
"""

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", ".."))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))

import bench  # noqa: E402

from xrec.train.runner import load_config_module  # noqa: E402

PRESETS = load_config_module(os.path.join(HERE, "config.py")).PRESETS

REFERENCE = (64, 2, 100, 64)  # the real-data `cpu` preset's model: d, blocks, max_len, feed-forward width
NUM_ITEMS = 3629  # ML-1M cross-region's target catalogue


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", default="")
  ap.add_argument("--families", nargs="+", default=["sasrec", "hstu"], choices=["sasrec", "hstu"])
  ap.add_argument("--rounds", type=int, default=3)
  args = ap.parse_args()
  max_len = PRESETS["cpu"]["max_len"]
  shapes = [("sasrec",) + REFERENCE] + [(family, d, blocks, max_len, 4 * d) for family in args.families
                                        for d, blocks in PRESETS["cpu"]["sizes"]]
  steps, rows = {}, {}
  for family, d, blocks, length, mlp in shapes:
    p = dict(num_items=NUM_ITEMS, embed_dim=d, max_len=length, num_layers=blocks, num_heads=1, mlp_dim=mlp,
             batch_size=128, compute_dtype="float32", eval_batch=256)
    config = bench._config(p)
    config.model.sasrec.block = "reference"  # the real-data presets' block, which the scaling study keeps
    if family == "hstu":  # the scaling study's second family: 1 head, no feed-forward
      config.model.name = "hstu"
      config.model.hstu.update(dict(num_layers=blocks, num_heads=1))
    step, evaluate, flops = bench.bench_xrec(p, bench._batch(p, np.random.default_rng(0)), config)
    name = f"{'' if family == 'sasrec' else family + '_'}d{d}x{blocks}_len{length}"
    steps[name] = step
    rows[name] = dict(eval_256_users_s=bench._time(evaluate, n_warm=1, n=3), step_gflop=flops / 1e9)
  # every step timed in the same alternating rounds (median), so that load from other processes falls
  # on all of them alike and the ratios to the reference hold
  for name, seconds in bench._interleaved(steps, rounds=args.rounds, n=2).items():
    rows[name]["step_s"] = seconds
    print(name, json.dumps(rows[name]), flush=True)
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"rows": rows, "host": os.uname().nodename, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                 "reference": "d64x2_len100"}, f, indent=1)


if __name__ == "__main__":
  main()
