"""Where xrec's train step loses to the plain Flax step on full-length batches (issue 29, item 2).

The step-alone rows of the bench (README, "Measured") time random full-length batches at ML-1M's
shape, where predicted positions skip nothing; there xrec's step was 0.79x the plain one. This
script walks from the plain step to xrec's one difference at a time, all timed in the same
interleaved rounds on the same batch, and prints XLA's cost analysis (FLOPs, bytes accessed) and
the compiled HLO's instructions by opcode for the plain and the xrec step:

  plain            bench.py's plain Flax SASRec step (flax MultiHeadDotProductAttention, optax adamw)
  +clip            + global-norm clipping at 1.0 and the gradient norm as a statistic (xrec's optimizer)
  +bias            + the per-item output bias xrec's SASRec has
  +xla_attention   + attention through jax.nn.dot_product_attention (xrec's Attention)
  +eps_b2          + LayerNorm epsilon 1e-6 and Adam b2 0.98 (xrec's defaults; no cost expected)
  +xrec_loss       + xrec's full_softmax loss (xrec/models/losses.py) instead of optax's cross-entropy
  xrec             xrec's step (xrec.train.step.make_train_step over models.build), as bench.py times it
  xrec_no_clip     xrec's step without clipping

  python experiments/bench/profile_step.py --out experiments/bench/results/profile_step_<code>.json
  python experiments/bench/profile_step.py --head   # the output head alone, its loss written 5 ways
"""

import argparse
import collections
import json
import os
import re
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench  # noqa: E402  (the presets, the plain model, xrec's step as the bench builds it)
from xrec.models import losses  # noqa: E402


class Block(nn.Module):
  d: int
  heads: int
  mlp: int
  xla_attention: bool
  eps: float

  @nn.compact
  def __call__(self, x, mask):
    h = nn.LayerNorm(epsilon=self.eps)(x)
    if self.xla_attention:  # xrec's Attention: projections, jax.nn.dot_product_attention, out
      head = self.d // self.heads
      q, k, v = (nn.DenseGeneral((self.heads, head), name=n)(h) for n in ("query", "key", "value"))
      a = nn.DenseGeneral(self.d, axis=(-2, -1), name="out")(jax.nn.dot_product_attention(q, k, v, mask=mask.astype(bool)))
    else:
      a = nn.MultiHeadDotProductAttention(self.heads)(h, h, mask=mask)
    x = x + a
    h = nn.LayerNorm(epsilon=self.eps)(x)
    return x + nn.Dense(self.d)(nn.gelu(nn.Dense(self.mlp)(h)))


class Model(nn.Module):
  v: int
  d: int
  l: int
  layers: int
  heads: int
  mlp: int
  bias: bool
  xla_attention: bool
  eps: float

  @nn.compact
  def __call__(self, ids):
    emb = nn.Embed(self.v, self.d)
    x = emb(ids) + nn.Embed(self.l, self.d)(jnp.arange(self.l))[None]
    mask = nn.combine_masks(nn.make_causal_mask(ids), nn.make_attention_mask(ids > 0, ids > 0))
    for _ in range(self.layers):
      x = Block(self.d, self.heads, self.mlp, self.xla_attention, self.eps)(x, mask)
    bias = self.param("output_bias", nn.initializers.zeros, (self.v,)) if self.bias else jnp.zeros((self.v,))
    return nn.LayerNorm(epsilon=self.eps)(x), emb.embedding, bias


def plain_variant(p, batch, clip=False, bias=False, xla_attention=False, xrec_defaults=False, xrec_loss=False):
  m = Model(p["num_items"] + 1, p["embed_dim"], p["max_len"], p["num_layers"], p["num_heads"],
            p.get("mlp_dim", 4 * p["embed_dim"]), bias, xla_attention, 1e-6 if xrec_defaults else 1e-5)
  params = m.init(jax.random.key(0), batch["inputs"])["params"]
  adam = optax.adamw(1e-3, b2=0.98 if xrec_defaults else 0.999)
  tx = optax.chain(optax.clip_by_global_norm(1.0), adam) if clip else adam

  @jax.jit
  def step(params, opt, batch):
    def loss_fn(params):
      hidden, table, bias = m.apply({"params": params}, batch["inputs"])
      if xrec_loss:  # xrec's full_softmax term (xrec/models/losses.py)
        return losses.full_softmax(hidden, batch["targets"], table, bias, num_items=p["num_items"])[0]
      ce = optax.softmax_cross_entropy_with_integer_labels(hidden @ table.T + bias, batch["targets"])
      w = (batch["targets"] > 0).astype(jnp.float32)
      return (ce * w).sum() / w.sum()
    loss, g = jax.value_and_grad(loss_fn)(params)
    stats = {"loss": loss, "grad_norm": optax.global_norm(g)} if clip else {"loss": loss}
    u, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, u), opt, stats

  state = [params, tx.init(params)]

  def run():
    state[0], state[1], stats = step(state[0], state[1], batch)
    return stats["loss"]
  return run, (step, (params, state[1], batch))


HLO_OP = re.compile(r"^\s*(?:ROOT )?%?[\w.\-]+ = (\w+)\[([\d,]*)\][^ ]* (\w[\w\-]*)\(")
BYTES = {"f32": 4, "s32": 4, "u32": 4, "pred": 1, "bf16": 2, "f16": 2, "s8": 1, "u8": 1, "s64": 8, "f64": 8}


def hlo_profile(jitted, args) -> dict:
  """XLA's cost analysis and the entry computation's instructions by opcode (count, output MB)."""
  compiled = jitted.lower(*args).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  text = compiled.as_text()
  entry = text[text.index("ENTRY"):]
  entry = entry[:entry.index("\n}")]
  ops = collections.defaultdict(lambda: [0, 0.0])
  for line in entry.splitlines():
    m = HLO_OP.match(line)
    if m:
      dtype, dims, op = m.groups()
      n = int(np.prod([int(x) for x in dims.split(",")])) if dims else 1
      ops[op][0] += 1
      ops[op][1] += n * BYTES.get(dtype, 4) / 1e6
  return {"flops": float(cost.get("flops", 0.0)), "bytes_accessed": float(cost.get("bytes accessed", 0.0)),
          "transcendentals": float(cost.get("transcendentals", 0.0)),
          "entry_ops": {k: {"count": c, "output_mb": round(mb, 1)} for k, (c, mb) in
                        sorted(ops.items(), key=lambda kv: -kv[1][1])}}


def head_variants(p, rounds: int) -> dict:
  """The output head alone (the [batch x len x catalogue] logits from the hidden states, the
  cross-entropy, and the gradients to hidden, table and bias), with the target's logit and the
  normaliser computed several ways; ms per forward + backward, same inputs, interleaved."""
  b, l, d, n = p["batch_size"], p["max_len"], p["embed_dim"], p["num_items"]
  v = -(-(n + 1) // 128) * 128  # xrec's padded vocab (model.vocab_multiple 128)
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(b, l, d)).astype(np.float32))
  table = jnp.asarray(rng.normal(size=(v, d)).astype(np.float32) * 0.1)
  bias = jnp.zeros((v,), jnp.float32)
  targets = jnp.asarray(rng.integers(1, n + 1, size=(b, l)).astype(np.int32))
  weights = (targets > 0).astype(jnp.float32)

  def logits(h, t, bias):
    valid = (jnp.arange(v) >= 1) & (jnp.arange(v) <= n)
    return jnp.einsum("bld,vd->blv", h, t, preferred_element_type=jnp.float32) + jnp.where(valid, bias, -1e9)

  def select(x, y):
    return jnp.where(jnp.arange(v)[None, None, :] == y[..., None], x, 0.0).sum(-1)

  def gather(x, y):
    return jnp.take_along_axis(x, y[..., None], -1)[..., 0]

  variants = {
      "optax cross-entropy": lambda x, y: optax.softmax_cross_entropy_with_integer_labels(x, y),
      "xrec logsumexp - select (before)": lambda x, y: losses._logsumexp(x) - select(x, y),
      "xrec logsumexp - gather (after)": lambda x, y: losses._logsumexp(x) - gather(x, y),
      "jax.nn.logsumexp - select": lambda x, y: jax.nn.logsumexp(x, -1) - select(x, y),
      "log_softmax, select": lambda x, y: -select(jax.nn.log_softmax(x, -1), y),
  }
  fns = {}
  for name, per_position in variants.items():
    loss = (lambda f: lambda h, t, bias: (f(logits(h, t, bias), targets) * weights).sum() / weights.sum())(per_position)
    grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
    fns[name] = (lambda g: lambda: g(hidden, table, bias))(grad)
  values = {k: float(f()[0]) for k, f in fns.items()}
  seconds = bench._interleaved(fns, rounds=rounds, n=1)
  return {k: {"ms": seconds[k] * 1e3, "loss": values[k]} for k in fns}


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="cpu_ml1m", choices=sorted(bench.PRESETS))
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--out", default="")
  ap.add_argument("--head", action="store_true", help="only the output head's variants (head_variants)")
  args = ap.parse_args()
  p = bench.PRESETS[args.preset]
  if args.head:
    result = {"preset": args.preset, "device": jax.devices()[0].device_kind, "jax": jax.__version__,
              "head_ms_per_forward_backward": head_variants(p, args.rounds)}
    print(json.dumps(result, indent=1))
    if args.out:
      with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    return
  batch = bench._batch(p, np.random.default_rng(0))
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  config = bench._config(p)
  config.model.dropout = 0.0
  fns, compiled = {}, {}
  for name, kw in (("plain", {}), ("+clip", dict(clip=True)), ("+bias", dict(clip=True, bias=True)),
                   ("+xla_attention", dict(clip=True, bias=True, xla_attention=True)),
                   ("+eps_b2", dict(clip=True, bias=True, xla_attention=True, xrec_defaults=True)),
                   ("+xrec_loss", dict(clip=True, bias=True, xla_attention=True, xrec_defaults=True, xrec_loss=True))):
    fns[name], compiled[name] = plain_variant(p, batch, **kw)
  xrec_run, _, _ = bench.bench_xrec(p, {k: np.asarray(v) for k, v in batch.items()}, config)
  fns["xrec"] = xrec_run
  no_clip = bench._config(p)
  no_clip.model.dropout, no_clip.optim.clip_norm = 0.0, 0.0
  fns["xrec_no_clip"] = bench.bench_xrec(p, {k: np.asarray(v) for k, v in batch.items()}, no_clip)[0]
  t0 = time.time()
  seconds = bench._interleaved(fns, rounds=args.rounds)
  result = {"preset": args.preset, "shape": p, "rounds": args.rounds, "timing_seconds": time.time() - t0,
            "device": jax.devices()[0].device_kind, "jax": jax.__version__,
            "ms_per_step": {k: v * 1e3 for k, v in seconds.items()},
            "throughput_vs_plain": {k: seconds["plain"] / v for k, v in seconds.items()}}
  result["hlo"] = {name: hlo_profile(step, step_args) for name, (step, step_args) in compiled.items()}
  from xrec import sharding
  from xrec.train.step import create_state, make_train_step
  from xrec import models
  from xrec.train import objectives, optimizer
  mesh = sharding.make_mesh(config.mesh)
  module = models.build(config.model, p["num_items"], p["max_len"])
  tx = optimizer.runtime(config.optim, 1000)
  state, state_sh = create_state(module, tx.tx, p["max_len"], 0, mesh, sharding.logical_rules(config.sharding.rules))
  xstep = make_train_step(module, tx, objectives.assemble(config.objective, True), p["num_items"], state_sh, mesh)
  dev_batch = sharding.put_batch({"target": {k: np.asarray(v) for k, v in batch.items()}}, mesh)
  result["hlo"]["xrec"] = hlo_profile(xstep, (state, dev_batch, jax.random.key(1)))
  print(json.dumps({k: result[k] for k in ("ms_per_step", "throughput_vs_plain")}, indent=1))
  for side, h in result["hlo"].items():
    print(side, f"flops {h['flops']:.3e} bytes {h['bytes_accessed']:.3e} transcendentals {h['transcendentals']:.3e}")
    print("  ", {k: v for k, v in list(h["entry_ops"].items())[:6]})
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
