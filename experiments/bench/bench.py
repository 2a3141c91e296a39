"""Training / evaluation throughput of xrec's SASRec step, against a naive Flax step in the same run.

  python experiments/bench/bench.py --preset=cpu_small
  python experiments/bench/bench.py --preset=h200_reference   # items 100k, embed 512, len 200, 4 blocks, 8 heads, batch 256, bf16

Reports, for xrec's jitted sharded train step and for a plain-Flax baseline
(flax.linen MultiHeadDotProductAttention blocks, fp32 logits, optax CE), at the
same shapes: ms/step, training sequences/s, evaluation users/s (full ranking),
peak memory, and on a GPU the model FLOP/s utilisation (MFU) against a bf16
matmul peak measured in the same run. All on random inputs: this measures
speed, not quality.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import sys
import time


def _preset_arg() -> str:
  for i, a in enumerate(sys.argv):
    if a.startswith("--preset="):
      return a.split("=", 1)[1]
    if a == "--preset" and i + 1 < len(sys.argv):
      return sys.argv[i + 1]
  return ""


if _preset_arg().startswith("catalog"):  # simulated CPU devices exist only if set before jax starts
  os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # the repo root

from xrec import models  # noqa: E402
from xrec import sharding  # noqa: E402
from xrec.defaults import base_config  # noqa: E402
from xrec.evaluate import evaluator, metrics  # noqa: E402
from xrec.train import objectives  # noqa: E402
from xrec.train.step import create_state, make_train_step  # noqa: E402
from xrec.train import optimizer  # noqa: E402

PRESETS = {
    # seconds: checks that the script runs (tests/test_bench.py), measures nothing useful
    "smoke": dict(num_items=50, embed_dim=8, max_len=16, num_layers=1, num_heads=1, mlp_dim=16, batch_size=8,
                  compute_dtype="float32", eval_batch=8, users=40, min_seq_len=5, mean_seq_len=10.0, max_seq_len=20),
    "cpu_small": dict(num_items=10_000, embed_dim=64, max_len=50, num_layers=2, num_heads=2,
                      batch_size=128, compute_dtype="float32", eval_batch=256),
    # MovieLens-1M's shape (configs/sasrec_ml1m.py): 3,706 items, max_len 200, d 64, 2 blocks, 1 head, MLP 64
    "cpu_ml1m": dict(num_items=3706, embed_dim=64, max_len=200, num_layers=2, num_heads=1, mlp_dim=64,
                     batch_size=128, compute_dtype="float32", eval_batch=256,
                     # --loop: synthetic data of ML-1M's shape (users, catalogue, sequence lengths)
                     users=6040, min_seq_len=20, mean_seq_len=165.6, max_seq_len=2314),
    "cpu_medium": dict(num_items=50_000, embed_dim=128, max_len=100, num_layers=2, num_heads=2,
                       batch_size=128, compute_dtype="float32", eval_batch=256),
    # catalogue scale (--preset=catalog_*): the item table split on 'vocab' over 4 (simulated CPU)
    # devices; per objective the compiled step's memory per device, and steps/s where timed
    "catalog_smoke": dict(num_items=20_000, embed_dim=16, max_len=10, num_layers=1, num_heads=1, mlp_dim=16,
                          batch_size=8, compute_dtype="float32", eval_batch=8, devices=4, chunk_size=1024,
                          num_negatives=64, timed=("sampled_softmax", "chunked_softmax", "full_softmax")),
    "catalog_1m": dict(num_items=1_000_000, embed_dim=64, max_len=50, num_layers=1, num_heads=1, mlp_dim=64,
                       batch_size=32, compute_dtype="float32", eval_batch=64, devices=4, chunk_size=8192,
                       num_negatives=1024, timed=("sampled_softmax", "chunked_softmax")),
    "catalog_10m": dict(num_items=10_000_000, embed_dim=64, max_len=50, num_layers=1, num_heads=1, mlp_dim=64,
                        batch_size=32, compute_dtype="float32", eval_batch=64, devices=4, chunk_size=8192,
                        num_negatives=1024, timed=("sampled_softmax",)),
    "h200_reference": dict(num_items=100_000, embed_dim=512, max_len=200, num_layers=4, num_heads=8,
                           batch_size=256, compute_dtype="bfloat16", eval_batch=1024),
}


def _config(p):
  c = base_config()
  c.model.max_len = p["max_len"]
  c.model.embed_dim = p["embed_dim"]
  c.model.sasrec.update(dict(num_layers=p["num_layers"], num_heads=p["num_heads"], mlp_dim=p.get("mlp_dim", 4 * p["embed_dim"])))
  c.model.compute_dtype = p["compute_dtype"]
  c.train.batch_size = p["batch_size"]
  c.eval.batch_size = p["eval_batch"]
  return c


def _batch(p, rng):
  x = rng.integers(1, p["num_items"] + 1, size=(p["batch_size"], p["max_len"] + 1)).astype(np.int32)
  return {"inputs": x[:, :-1], "targets": x[:, 1:], "items": x[:, 1:]}


def _interleaved(fns: dict, rounds: int = 5, n: int = 2) -> dict:
  """Seconds per call of each fn, timed in alternating rounds (median over rounds), so that load
  from other processes falls on every side alike and the ratios stay meaningful."""
  for fn in fns.values():
    jax.block_until_ready(fn())
    jax.block_until_ready(fn())
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t = time.perf_counter()
      for _ in range(n):
        out = fn()
      jax.block_until_ready(out)
      times[k].append((time.perf_counter() - t) / n)
  return {k: float(np.median(v)) for k, v in times.items()}


def _time(fn, n_warm=2, n=10):
  for _ in range(n_warm):
    out = fn()
  jax.block_until_ready(out)
  t = time.perf_counter()
  for _ in range(n):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / n


def _flops(jitted, *args) -> float:
  try:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))
  except Exception:  # cost analysis is backend-dependent
    return 0.0


def model_flops(p) -> float:
  """Analytic matmul FLOPs of one train step (fwd + bwd = 3x fwd), full softmax over items."""
  b, l, d, v = p["batch_size"], p["max_len"], p["embed_dim"], p["num_items"]
  mlp = p.get("mlp_dim", 4 * d)
  per_layer = 2 * b * l * (4 * d * d + 2 * d * mlp) + 2 * 2 * b * l * l * d
  return 3.0 * (p["num_layers"] * per_layer + 2 * b * l * d * v)


class NaiveBlock(nn.Module):
  d: int
  heads: int
  mlp: int
  dtype: object
  dropout: float = 0.0
  block: str = "pre_ln"  # or "reference": SASRec's reference code (residuals on the normalised input, ReLU)

  @nn.compact
  def __call__(self, x, mask, deterministic=True):
    drop = nn.Dropout(self.dropout, deterministic=deterministic or not self.dropout)
    h = nn.LayerNorm(dtype=self.dtype)(x)
    if self.block == "reference":  # queries normalised, keys and values not
      x = h + drop(nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)(h, x, mask=mask))
      h = nn.LayerNorm(dtype=self.dtype)(x)
      return h + drop(nn.Dense(self.d, dtype=self.dtype)(nn.relu(nn.Dense(self.mlp, dtype=self.dtype)(h))))
    x = x + drop(nn.MultiHeadDotProductAttention(self.heads, dtype=self.dtype)(h, h, mask=mask))
    h = nn.LayerNorm(dtype=self.dtype)(x)
    return x + drop(nn.Dense(self.d, dtype=self.dtype)(nn.gelu(nn.Dense(self.mlp, dtype=self.dtype)(h))))


class NaiveSASRec(nn.Module):
  """The plain Flax baseline: what one writes without xrec."""
  v: int
  d: int
  l: int
  layers: int
  heads: int
  mlp: int
  dtype: object
  dropout: float = 0.0  # on the embeddings and each sublayer's output (0: none, as the step bench)
  # "reference": SASRec's reference code as one writes it from pmixer's port (its block, item
  # table N(0, 0.02^2), inputs scaled by sqrt(d)); "pre_ln": flax's defaults, no input scaling
  block: str = "pre_ln"

  @nn.compact
  def __call__(self, ids, deterministic=True):
    reference = self.block == "reference"
    emb = nn.Embed(self.v, self.d, embedding_init=nn.initializers.normal(0.02)) if reference else nn.Embed(self.v, self.d)
    x = emb(ids).astype(self.dtype) * (self.d ** 0.5 if reference else 1.0)
    x = x + nn.Embed(self.l, self.d)(jnp.arange(self.l))[None].astype(self.dtype)
    x = nn.Dropout(self.dropout, deterministic=deterministic or not self.dropout)(x)
    mask = nn.combine_masks(nn.make_causal_mask(ids), nn.make_attention_mask(ids > 0, ids > 0))
    for _ in range(self.layers):
      x = NaiveBlock(self.d, self.heads, self.mlp, self.dtype, self.dropout, self.block)(x, mask, deterministic)
    x = nn.LayerNorm()(x.astype(jnp.float32))
    return x @ emb.embedding.T  # fp32 logits


def plain_model(p, dropout: float = 0.0) -> NaiveSASRec:
  return NaiveSASRec(p["num_items"] + 1, p["embed_dim"], p["max_len"], p["num_layers"], p["num_heads"],
                     p.get("mlp_dim", 4 * p["embed_dim"]), models.dtype(p["compute_dtype"]), dropout,
                     p.get("block", "pre_ln"))


def plain_model_and_step(p, inputs, seed: int = 0, dropout: float = 0.0):
  """The plain Flax SASRec of the preset's shape, its params and Adam state, and one jitted step
  (params, opt, batch[, rng]) -> (params, opt, loss): what one writes without xrec (`rng` draws the
  dropout masks when dropout > 0)."""
  m = plain_model(p, dropout)
  params = m.init(jax.random.key(seed), inputs)["params"]
  tx = optax.adamw(1e-3)

  @jax.jit
  def step(params, opt, batch, rng=None):
    def loss_fn(params):
      logits = (m.apply({"params": params}, batch["inputs"]) if rng is None else
                m.apply({"params": params}, batch["inputs"], False, rngs={"dropout": rng}))
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["targets"])
      w = (batch["targets"] > 0).astype(jnp.float32)
      return (ce * w).sum() / w.sum()
    loss, g = jax.value_and_grad(loss_fn)(params)
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, loss

  return params, tx.init(params), step


def bench_naive(p, batch):
  params, opt, step = plain_model_and_step(p, batch["inputs"])
  state = [params, opt]

  def run():
    state[0], state[1], loss = step(state[0], state[1], batch)
    return loss
  return run


def bench_xrec(p, batch, config):
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.sharding.rules)
  module = models.build(config.model, p["num_items"], p["max_len"])
  tx = optimizer.runtime(config.optim, 1000)  # as a run builds it: the peak rate an input of the step
  state, state_sh = create_state(module, tx.tx, p["max_len"], 0, mesh, rules)
  objective = objectives.assemble(config.objective, module.causal)
  step = make_train_step(module, tx, objective, p["num_items"], state_sh, mesh)
  rng = jax.random.key(1)
  dev_batch = sharding.put_batch({"target": batch}, mesh)
  flops = _flops(step, state, dev_batch, rng)
  holder = [state]

  def run():
    holder[0], stats = step(holder[0], dev_batch, rng)
    return stats["loss"]

  # evaluation: full ranking of one batch of users
  ev = evaluator.Evaluator(module, p["num_items"], p["max_len"], config.eval, mesh, state_sh["params"])
  b = p["eval_batch"]
  rng_np = np.random.default_rng(2)
  ids = rng_np.integers(1, p["num_items"] + 1, size=(b, p["max_len"] + 1)).astype(np.int32)
  eb = sharding.put_batch({"inputs": ids[:, :-1], "target": ids[:, -1], "history": ids[:, :-1],
                    "weight": np.ones(b, np.float32)}, mesh)
  everything = np.ones(ev.vocab_size, bool)  # the candidate set: every item
  return run, (lambda: ev.batch_step(holder[0]["params"], eb, everything)), flops


def loop_config(p, data_dir: str, steps: int, dropout: float):
  """A single-domain run of `steps` on synthetic data of the preset's shape, evaluated once at the
  end, throughput logged every 5 steps."""
  c = _config(p)
  c.model.dropout = dropout
  c.data.name, c.data.domain, c.data.data_dir = "synthetic", "target", data_dir
  c.data.synthetic.update(dict(num_target_users=p["users"], num_source_users=p["users"], num_target_items=p["num_items"],
                               num_source_items=p["num_items"], min_seq_len=p["min_seq_len"],
                               mean_seq_len=p["mean_seq_len"], max_seq_len=p["max_seq_len"]))
  c.objective.terms = (("full_softmax", 1.0),)
  c.train.update(dict(num_steps=steps, eval_every_steps=steps, checkpoint_every_steps=steps, eval_at_start=False,
                      log_every_steps=5, progress_bar=False))
  return c


def plain_batches(domain, batch_size: int, max_len: int, steps: int, seed: int):
  """The plain loop's input: batch(i) holds each user's last max_len + 1 training items, right-
  aligned, the users in a fresh permutation per epoch (numpy, no pipeline)."""
  users = np.asarray(domain.train_users)
  rng = np.random.default_rng(seed)
  order = np.concatenate([rng.permutation(users) for _ in range(steps * batch_size // len(users) + 1)])

  def batch(i):
    x = np.zeros((batch_size, max_len + 1), np.int32)
    for row, u in enumerate(order[i * batch_size:(i + 1) * batch_size]):
      seq = domain.sequence(int(u))[:-2][-(max_len + 1):]
      x[row, max_len + 1 - len(seq):] = seq
    return {"inputs": x[:, :-1], "targets": x[:, 1:]}
  return batch


def plain_loop(p, domain, steps: int, seed: int = 0) -> list[float]:
  """What one writes without xrec: numpy batches (plain_batches), one jitted plain Flax step;
  sequences/s per window of 5 steps."""
  b = p["batch_size"]
  batch = plain_batches(domain, b, p["max_len"], steps, seed)

  params, opt, step = plain_model_and_step(p, batch(0)["inputs"], seed)

  rates, t = [], time.perf_counter()
  for i in range(steps):
    params, opt, loss = step(params, opt, batch(i))
    if (i + 1) % 5 == 0:
      float(loss)  # the plain loop logs its loss, which waits for the step
      now = time.perf_counter()
      rates.append(5 * b / (now - t))
      t = now
  return rates


def bench_loop(p, steps: int, dropout: float, rounds: int = 2) -> dict:
  """The whole training loop (input pipeline, step, logging) of xrec's train_and_evaluate against
  the plain loop on the same synthetic data, alternating `rounds` times; the first window of
  each run (compilation) is dropped and the median window rate over the rest reported."""
  import tempfile
  from xrec.data import pipeline
  from xrec.train.loop import train_and_evaluate
  out = {"xrec": [], "plain": []}
  with tempfile.TemporaryDirectory() as tmp:
    config = loop_config(p, os.path.join(tmp, "data"), steps, dropout)
    domain = pipeline.load_domain(config.data)
    for r in range(rounds):
      workdir = os.path.join(tmp, f"run{r}")
      train_and_evaluate(config, workdir)
      with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
      out["xrec"] += [row["examples_per_second"] for row in rows if row["split"] == "train"][1:]
      out["plain"] += plain_loop(p, domain, steps, seed=r)[1:]
    evaluation = bench_population_eval(p, config, domain)
  xrec, plain = float(np.median(out["xrec"])), float(np.median(out["plain"]))
  return {"steps_per_run": steps, "rounds": rounds, "xrec_loop_sequences_per_s": xrec,
          "plain_loop_sequences_per_s": plain, "loop_ratio_xrec_vs_plain": xrec / plain,
          "training_users": len(domain.train_users), "interactions": int(domain.lengths.sum()),
          "population_eval": evaluation}


def _issue_baseline_eval(module, num_items, config, mesh, param_sh):
  """Evaluation as it was when issue 11 measured it (454 users/s at the ML-1M shape): every user's
  full-length input through the whole encoder, the last position's state scored against the
  catalogue; the same masking and ranking. Returns (users/s of one pass over the population)."""
  from xrec.data import pipeline
  from xrec.models import common

  def step(params, batch, candidates):
    hidden = module.apply({"params": params}, batch["inputs"], deterministic=True, method="encode")[:, -1]
    table, bias = module.apply({"params": params}, method="output_table")
    scores = common.score_items(hidden, table, bias)
    rank = metrics.target_rank(scores, batch["target"], num_items, batch["history"], candidates)
    return metrics.metric_sums(rank, batch["weight"], tuple(config.eval.ks))

  jitted = jax.jit(step, in_shardings=(param_sh, sharding.batch_sharding(mesh), sharding.replicated(mesh)))

  def run(params, domain):
    candidates = np.ones(module.vocab_size, bool)
    start, count = time.perf_counter(), 0.0
    for batch in pipeline.eval_batches(domain, "test", config.eval.batch_size, config.model.max_len):
      count += float(jax.device_get(jitted(params, sharding.put_batch(batch, mesh), candidates))["count"])
    return count / (time.perf_counter() - start)
  return run


def bench_population_eval(p, config, domain, rounds: int = 2) -> dict:
  """Full-ranking test evaluation of the whole population (its real history lengths): xrec's
  evaluator with length buckets, with full-length inputs, and the evaluation issue 11 measured
  (full encoder pass, `_issue_baseline_eval`), alternating; users/s (median over rounds)."""
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.sharding.rules)
  module = models.build(config.model, domain.num_items, p["max_len"])
  tx, _ = optimizer.make_optimizer(config.optim, 1000)
  state, state_sh = create_state(module, tx, p["max_len"], 0, mesh, rules)
  evaluators = {name: evaluator.Evaluator(module, domain.num_items, p["max_len"], config.eval, mesh,
                                          state_sh["params"], length_buckets=name == "buckets")
                for name in ("buckets", "full_length")}
  runs = {name: (lambda ev: lambda: ev(state["params"], domain, "test")["users_per_second"])(ev)
          for name, ev in evaluators.items()}
  baseline = _issue_baseline_eval(module, domain.num_items, config, mesh, state_sh["params"])
  runs["issue_baseline"] = lambda: baseline(state["params"], domain)
  for ev in evaluators.values():
    ev.warm_up(state["params"], domain)
  runs["issue_baseline"]()  # compiles
  speeds = {name: [] for name in runs}
  for _ in range(rounds):
    for name, run in runs.items():
      speeds[name].append(run())
  out = {f"{name}_users_per_s": float(np.median(v)) for name, v in speeds.items()}
  out["users"] = len(domain.eval_users)
  out["bucket_widths"] = sorted({b["inputs"].shape[-1] for b in evaluators["buckets"]._batches(domain, "test")[0]})
  out["speedup"] = out["buckets_users_per_s"] / out["full_length_users_per_s"]
  out["speedup_vs_issue_baseline"] = out["buckets_users_per_s"] / out["issue_baseline_users_per_s"]
  return out


def matmul_peak(dtype) -> float:
  n = 8192 if jax.devices()[0].platform == "gpu" else 1024
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda x: x @ x)
  return 2 * n ** 3 / _time(lambda: f(a), 2, 10)


def peak_memory_bytes() -> dict:
  out = {"host_max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_bytes"] = int(stats["peak_bytes_in_use"])
  return out


def _memory(compiled) -> dict:
  """What XLA allocates per device for a compiled program (bytes)."""
  m = compiled.memory_analysis()
  return {"arguments": int(m.argument_size_in_bytes), "outputs": int(m.output_size_in_bytes),
          "aliased": int(m.alias_size_in_bytes), "temporaries": int(m.temp_size_in_bytes),
          "peak_estimate": int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
                               + m.temp_size_in_bytes)}


def _largest_collective(compiled) -> int:
  """Elements of the largest array any collective of the program moves between devices (XLA
  combines collectives into one over a tuple: every array of the result counts)."""
  import re
  sizes = [0]
  for m in re.finditer(r"= (.+?) (?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(",
                       compiled.as_text()):
    sizes += [int(np.prod([int(d) for d in dims.split(",") if d] or [1])) for dims in re.findall(r"\[([\d,]*)\]", m.group(1))]
  return max(sizes)


def bench_catalogue(p, steps: int = 2) -> dict:
  """The item table split on 'vocab' over the mesh's 'model' axis (every device holds 1/devices of
  it). For each objective (sampled softmax with logQ correction, the chunked full softmax, and the
  plain full softmax for comparison): the compiled step's memory per device, the largest array a
  collective moves, and ms/step for those the preset times. Then full-ranking evaluation: memory,
  users/s and the largest collective (per-user counts: the [users, vocab] scores stay on their
  devices), and top-k recommendation lists per device merged over the mesh."""
  config = _config(p)
  config.mesh.data, config.mesh.model = 1, p["devices"]
  config.sharding.rules = tuple((a, m if a in ("vocab", "batch") else None) for a, m in config.sharding.rules)
  config.objective.chunked_softmax.chunk_size = p["chunk_size"]
  config.objective.sampled_softmax.num_negatives = p["num_negatives"]
  mesh, rules = sharding.make_mesh(config.mesh), sharding.logical_rules(config.sharding.rules)
  module = models.build(config.model, p["num_items"], p["max_len"])
  tx = optimizer.runtime(config.optim, 1000)
  t = time.perf_counter()
  state, state_sh = create_state(module, tx.tx, p["max_len"], 0, mesh, rules)
  jax.block_until_ready(state)
  table = state["params"]["item_embed"]["embedding"]
  out = {"devices": p["devices"], "vocab_rows": int(module.vocab_size), "init_seconds": time.perf_counter() - t,
         "item_table_bytes": int(table.size * table.dtype.itemsize),
         "item_table_bytes_per_device": int(table.addressable_shards[0].data.nbytes),
         "state_bytes_per_device": int(sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(state))),
         "objectives": {}}
  batch = _batch(p, np.random.default_rng(0))
  dev_batch = sharding.put_batch({"target": batch}, mesh)
  for term in ("sampled_softmax", "chunked_softmax", "full_softmax"):
    config.objective.terms = ((term, 1.0),)
    step = make_train_step(module, tx, objectives.assemble(config.objective, True), p["num_items"], state_sh,
                                mesh, vocab_shards=sharding.axis_shards(mesh, rules, "vocab"))
    compiled = step.lower(state, dev_batch, jax.random.key(1)).compile()
    row = {"memory_per_device": _memory(compiled), "largest_collective_elements": _largest_collective(compiled)}
    if term in p["timed"]:
      holder = [state]

      def run():
        holder[0], stats = step(holder[0], dev_batch, jax.random.key(1))
        return stats["loss"]
      jax.block_until_ready(run())  # the first call (and its donation) untimed
      t = time.perf_counter()
      for _ in range(steps):
        loss = run()
      jax.block_until_ready(loss)
      row["ms_per_step"] = (time.perf_counter() - t) / steps * 1e3
      row["loss"] = float(loss)
      state = holder[0]
    out["objectives"][term] = row
  ev = evaluator.Evaluator(module, p["num_items"], p["max_len"], config.eval, mesh, state_sh["params"])
  b = p["eval_batch"]
  ids = np.random.default_rng(2).integers(1, p["num_items"] + 1, size=(b, p["max_len"] + 1)).astype(np.int32)
  eval_batch = sharding.put_batch({"inputs": ids[:, :-1], "target": ids[:, -1], "history": ids[:, :-1],
                                   "weight": np.ones(b, np.float32)}, mesh)
  everything = np.ones(ev.vocab_size, bool)
  compiled = ev.batch_step.lower(state["params"], eval_batch, everything).compile()
  sec = _time(lambda: ev.batch_step(state["params"], eval_batch, everything), 1, 3)
  top_k = jax.jit(lambda params, x: metrics.top_k_items(
      module.apply({"params": params}, x, method="score_last"), 10, p["num_items"], x, mesh=mesh))
  top_k_compiled = top_k.lower(state["params"], eval_batch["inputs"]).compile()
  top_sec = _time(lambda: top_k(state["params"], eval_batch["inputs"]), 1, 3)
  out["evaluation"] = {"users_per_batch": b, "users_per_s": b / sec, "memory_per_device": _memory(compiled),
                       "largest_collective_elements": _largest_collective(compiled),
                       "scores_elements_per_batch": b * int(ev.vocab_size),
                       "top10_users_per_s": b / top_sec, "top10_memory_per_device": _memory(top_k_compiled),
                       "top10_largest_collective_elements": _largest_collective(top_k_compiled)}
  return out


def real_population_eval(preset: str, p: dict, manual_dir: str) -> dict:
  """bench_population_eval on real MovieLens-1M (every user, their real history lengths, the whole
  catalogue), the model at the preset's shape with fresh parameters (speed, not quality)."""
  from xrec.data import pipeline
  config = _config(p)
  config.data.update(dict(name="movielens", domain="main"))
  config.data.movielens.update(dict(release="1m", manual_dir=manual_dir, download=False))
  config.data.preprocess.min_seq_len = 3
  config.eval.mask_history = True
  domain = pipeline.load_domain(config.data)
  dev = jax.devices()[0]
  lengths = domain.lengths[domain.eval_users]
  return {"preset": preset, "shapes": p, "data": "movielens-1m (real)", "device_kind": dev.device_kind,
          "platform": dev.platform, "jax_version": jax.__version__,
          "history_length": {"median": float(np.median(lengths)), "mean": float(lengths.mean()),
                             "share_at_least_max_len": float(np.mean(lengths >= p["max_len"]))},
          "population_eval": bench_population_eval(p, config, domain, rounds=3)}


def main():
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--preset", default="cpu_small", choices=sorted(PRESETS))
  ap.add_argument("--skip_naive", action="store_true")
  ap.add_argument("--dropout", type=float, default=None,
                  help="xrec's model.dropout (default: the config's 0.2; the plain Flax step has none, so 0 "
                       "compares like with like)")
  ap.add_argument("--out", default="")
  ap.add_argument("--loop", type=int, default=0,
                  help="also time the whole training loop (xrec's train_and_evaluate vs a plain loop, same "
                       "synthetic data of the preset's shape) over runs of this many steps")
  ap.add_argument("--real_eval", default="",
                  help="only the population evaluation (bench_population_eval), on real MovieLens-1M: the "
                       "folder holding ml-1m/ (e.g. ../shared/data); the preset gives the model's shape")
  ap.add_argument("--ablate", action="store_true",
                  help="also time xrec's step without gradient clipping, with a constant learning rate and "
                       "without the output bias (model.output_bias=False; the plain step has none), same run, "
                       "interleaved: what each costs against the plain Flax step")
  args = ap.parse_args()
  p = PRESETS[args.preset]
  dev = jax.devices()[0]
  if "devices" in p:  # catalogue scale
    result = {"preset": args.preset, "shapes": p, "device_kind": dev.device_kind, "platform": dev.platform,
              "num_devices": jax.device_count(), "jax_version": jax.__version__, "catalogue": bench_catalogue(p)}
    result["memory"] = peak_memory_bytes()
    _write(result, args.out)
    return
  if args.real_eval:
    _write(real_population_eval(args.preset, p, args.real_eval), args.out)
    return
  config = _config(p)
  if args.dropout is not None:
    config.model.dropout = args.dropout
  batch = _batch(p, np.random.default_rng(0))
  result = {"preset": args.preset, "shapes": p, "xrec_dropout": float(config.model.dropout), "device_kind": dev.device_kind, "platform": dev.platform,
            "num_devices": jax.device_count(), "jax_version": jax.__version__}
  train, evaluate, flops = bench_xrec(p, batch, config)
  fns = {"xrec": train, "eval": evaluate}
  if not args.skip_naive:
    fns["naive"] = bench_naive(p, batch)
  ablations = {}
  if args.ablate:  # xrec's step with one piece of its extra work removed
    for name, change in (("xrec_no_clip", {"optim.clip_norm": 0.0}), ("xrec_constant_lr", {"optim.schedule": "constant"}),
                         ("xrec_no_output_bias", {"model.output_bias": False})):
      variant = copy.deepcopy(config)
      for field, value in change.items():
        group, key = field.split(".")
        variant[group][key] = value
      fns[name] = bench_xrec(p, batch, variant)[0]
      ablations[name] = change
  seconds = _interleaved(fns)
  sec, eval_sec = seconds["xrec"], seconds["eval"]
  result["xrec"] = {"ms_per_step": sec * 1e3, "train_sequences_per_s": p["batch_size"] / sec,
                    "eval_users_per_s": p["eval_batch"] / eval_sec, "xla_flops_per_step": flops}
  analytic = model_flops(p)
  result["model_flops_per_step"] = analytic
  if not args.skip_naive:
    nsec = seconds["naive"]
    result["naive_flax"] = {"ms_per_step": nsec * 1e3, "train_sequences_per_s": p["batch_size"] / nsec}
    result["speedup_vs_naive"] = nsec / sec
  for name, change in ablations.items():
    result[name] = {"change": change, "ms_per_step": seconds[name] * 1e3,
                    "speedup_vs_xrec": seconds["xrec"] / seconds[name]}
    if "naive" in seconds:
      result[name]["speedup_vs_naive"] = seconds["naive"] / seconds[name]
  if dev.platform == "gpu":
    peak = matmul_peak(models.dtype(p["compute_dtype"]))
    result["matmul_peak_flops"] = peak
    result["xrec"]["mfu"] = analytic / sec / peak
    if "naive_flax" in result:
      result["naive_flax"]["mfu"] = analytic / nsec / peak
  if args.loop:
    result["loop"] = bench_loop(p, args.loop, float(config.model.dropout))
  result["memory"] = peak_memory_bytes()
  _write(result, args.out)


def _write(result: dict, path: str) -> None:
  text = json.dumps(result, indent=2)
  print(text)
  if path:
    with open(path, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
