"""Where full-ranking evaluation spends its time at the ML-1M shape (cpu_ml1m synthetic data): the
host building the batches, the whole evaluation, the jitted evaluation step alone, and over the
same batches the encoder alone (last_states), scoring (score_last), and scoring + ranking
without history masking. Two passes each, after a warm-up.

  python experiments/bench/profile_eval.py
"""

from __future__ import annotations

import collections
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (puts the repo root on the path)
import jax  # noqa: E402

from xrec import models, sharding  # noqa: E402
from xrec.data import pipeline  # noqa: E402
from xrec.evaluate import evaluator, metrics  # noqa: E402
from xrec.train import loop, optimizer  # noqa: E402


def _seconds(fn, batches) -> float:
  for b in batches:  # compiles each input length
    jax.block_until_ready(fn(b))
  start = time.perf_counter()
  for b in batches:
    out = fn(b)
  jax.block_until_ready(out)
  return time.perf_counter() - start


def main():
  p = bench.PRESETS["cpu_ml1m"]
  config = bench.loop_config(p, os.path.join(tempfile.gettempdir(), "xrec_profile_eval_data"), 10, 0.0)
  domain = pipeline.load_domain(config.data)
  mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.sharding.rules)
  module = models.build(config.model, domain.num_items, p["max_len"])
  tx, _ = optimizer.make_optimizer(config.optim, 1000)
  state, state_sh = bench.create_state(module, tx, p["max_len"], 0, mesh, rules)
  params = state["params"]
  ev = evaluator.Evaluator(module, domain.num_items, p["max_len"], config.eval, mesh, state_sh["params"])
  ev.warm_up(params, domain)
  candidates = ev._candidates()
  device_candidates = jax.numpy.asarray(candidates)
  encode = jax.jit(lambda params, x: module.apply({"params": params}, x, method="last_states"))
  score = jax.jit(lambda params, x: module.apply({"params": params}, x, method="score_last"))
  rank = jax.jit(lambda params, b: metrics.target_rank(
      module.apply({"params": params}, b["inputs"], method="score_last"), b["target"], domain.num_items, None,
      device_candidates))
  for _ in range(2):
    start = time.perf_counter()
    batches = list(ev._batches(domain, "test")[0])
    host = time.perf_counter() - start
    start = time.perf_counter()
    out = ev(params, domain, "test")
    whole = time.perf_counter() - start
    on_device = [sharding.put_batch(b, mesh) for b in batches]
    print(f"batches on the host {host:.2f} s | whole evaluation {whole:.2f} s ({out['users_per_second']:.0f} users/s)"
          f" | evaluation step {_seconds(lambda b: ev.batch_step(params, b, candidates), on_device):.2f} s"
          f" | last_states {_seconds(lambda b: encode(params, b['inputs']), on_device):.2f} s"
          f" | score_last {_seconds(lambda b: score(params, b['inputs']), on_device):.2f} s"
          f" | score + rank, no history {_seconds(lambda b: rank(params, b), on_device):.2f} s")
  print("batches per input length:", dict(collections.Counter(b["inputs"].shape[-1] for b in batches)))


if __name__ == "__main__":
  main()
