"""What transparent huge pages do to a training step on XLA:CPU (Linux), same process, interleaved.

XLA:CPU maps each execution's temporary buffer afresh (one anonymous mmap per step, freed after it:
about 1.2 GB for xrec's SASRec step at ML-1M's shape, most of it the [positions x catalogue]
logits and their gradients), so every step faults that memory in again. In 4 KiB pages that is
about 300,000 page faults per step; with transparent huge pages in 2 MiB pages, a few hundred.
The kernel's mode (/sys/kernel/mm/transparent_hugepage/enabled) decides: `always` gives the step's
buffer huge pages, `madvise` (a common default) does not, since XLA does not madvise it.

This script times the same jitted steps (xrec's and bench.py's plain Flax step) with huge pages
allowed and disabled for this process (prctl PR_SET_THP_DISABLE), alternating rounds so that
other load falls on both sides alike, and reports ms per step, CPU user and system seconds per
step and minor page faults per step. With the mode at `madvise` or `never` both sides have no huge
pages (the script says so); as root, `echo always > /sys/kernel/mm/transparent_hugepage/enabled`
makes the comparison.

  python experiments/bench/host_memory.py --preset cpu_ml1m --out results/host_memory.json
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (sets up the import path and XLA flags of the bench presets)
import jax  # noqa: E402

from xrec.train import loop  # noqa: E402

PR_SET_THP_DISABLE = 41


def set_huge_pages(allowed: bool) -> None:
  libc = ctypes.CDLL(None, use_errno=True)
  if libc.prctl(PR_SET_THP_DISABLE, 0 if allowed else 1, 0, 0, 0) != 0:
    raise OSError(ctypes.get_errno(), "prctl(PR_SET_THP_DISABLE) failed")


def _usage():
  r = resource.getrusage(resource.RUSAGE_SELF)
  return np.array([time.perf_counter(), r.ru_utime, r.ru_stime, r.ru_minflt], np.float64)


def measure(fns: dict, rounds: int, n: int) -> dict:
  """Per step, for each (fn, huge pages allowed or not): median wall, user, system seconds and
  minor faults over the rounds; the sides alternate within each round."""
  sides = [(name, allowed) for name in fns for allowed in (True, False)]
  for name, allowed in sides:  # compile and warm up both sides
    set_huge_pages(allowed)
    for _ in range(2):
      jax.block_until_ready(fns[name]())
  samples = {side: [] for side in sides}
  for _ in range(rounds):
    for name, allowed in sides:
      set_huge_pages(allowed)
      start = _usage()
      for _ in range(n):
        out = fns[name]()
      jax.block_until_ready(out)
      samples[(name, allowed)].append((_usage() - start) / n)
  set_huge_pages(True)
  out = {}
  for (name, allowed), rows in samples.items():
    wall, user, system, faults = np.median(np.stack(rows), axis=0)
    out.setdefault(name, {})["huge_pages" if allowed else "no_huge_pages"] = {
        "ms_per_step": wall * 1e3, "user_s_per_step": user, "system_s_per_step": system,
        "minor_faults_per_step": faults}
  for name, sides_ in out.items():
    sides_["speedup_with_huge_pages"] = sides_["no_huge_pages"]["ms_per_step"] / sides_["huge_pages"]["ms_per_step"]
  return out


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="cpu_ml1m", choices=sorted(bench.PRESETS))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--steps", type=int, default=2, help="steps per side per round")
  ap.add_argument("--out", default="")
  args = ap.parse_args()
  p = bench.PRESETS[args.preset]
  config = bench._config(p)
  config.model.dropout = 0.0  # as the plain step
  batch = bench._batch(p, np.random.default_rng(0))
  fns = {"xrec": bench.bench_xrec(p, batch, config)[0], "plain_flax": bench.bench_naive(p, batch)}
  mode = loop.transparent_hugepages()
  result = {"preset": args.preset, "shapes": p, "transparent_hugepage_mode": mode,
            "platform": jax.devices()[0].platform, "jax_version": jax.__version__,
            "note": None if mode == "always" else
            f"the kernel's mode is {mode!r}: neither side gets huge pages for XLA's buffers, so the "
            "two sides measure the same thing",
            "steps": measure(fns, args.rounds, args.steps)}
  text = json.dumps(result, indent=2)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
