"""A text tower that trains (issue 30): the top layers of a pretrained BERT-family sentence encoder
(all-MiniLM-L6-v2, ...) fine-tuned end to end with the sequence model, in full or with LoRA on the
attention's query and value projections (RecFormer / UniSRec-style item towers).

What does not change is computed once: the token states after the encoder's frozen bottom layers
for every item of the catalogue ([vocab, tokens, hidden], `xrec/train/item_text.py`, cached on
disk), and the pretrained weights of the top `layers` layers. Both are data of the current
catalogue, like the frozen text table (`Roles.item_text`): set by the trainer after every load,
never trained, never loaded from a checkpoint. What trains (`Roles.item_tower`) starts at zero, so
a tower at step 0 gives the pretrained encoder's vectors (to float rounding):

  mode "full": a delta for every weight of the top layers (kernel, bias, LayerNorm scale and bias);
               the layer runs with base + delta (the same function as tuning the weights themselves,
               and weight decay pulls towards the pretrained weights, not towards zero);
  mode "lora": B A added to the query and value kernels (Hu et al. 2022): A [hidden, rank] random
               (N(0, 1/hidden)), B [rank, hidden] zero, unscaled (alpha = rank), as the `lora` preset's
               modules (transfer/insert/peft.py); everything else of the layer frozen.

Rows are sorted by token count and run in up to four length buckets (each at its longest row's
width), so a catalogue of short titles does not pay for its longest one. The tower's output is
pooled like the encoder's (mean over the item's tokens or [CLS], optionally L2-normalised) and goes
through the model's adaptor. Every step runs the tuned layers over the whole
catalogue's tokens (the output table scores every item), so its cost grows with items x tokens x
tuned layers; `layers` is the knob.

`bert_layer` is BERT's post-LayerNorm layer written once over `dense` and `norm` callables: the
frozen encoder (text_encoder.BertLayer, flax Dense / LayerNorm) and the tower (base + delta / LoRA)
compute it through the same code.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

MODES = ("full", "lora")
DENSES = ("query", "key", "value", "attn_out", "mlp_in", "mlp_out")
NORMS = ("attn_ln", "mlp_ln")


def bert_layer(x, keep, dense: Callable, norm: Callable, heads: int):
  """One BERT layer: x [n, L, hidden], keep [n, 1, 1, L] (attended keys); dense(name, x) and
  norm(name, x) apply the layer's named projections and LayerNorms."""
  hidden = x.shape[-1]
  width = hidden // heads
  split = lambda t: t.reshape(t.shape[:2] + (heads, width))  # noqa: E731
  q, k, v = (split(dense(name, x)) for name in ("query", "key", "value"))
  scores = jnp.einsum("nqhd,nkhd->nhqk", q, k) * (width ** -0.5)  # a Python float: keeps the compute dtype
  weights = jax.nn.softmax(jnp.where(keep, scores, jnp.finfo(scores.dtype).min), axis=-1)
  context = jnp.einsum("nhqk,nkhd->nqhd", weights, v).reshape(x.shape)
  x = norm("attn_ln", x + dense("attn_out", context))
  inner = jax.nn.gelu(dense("mlp_in", x), approximate=False)
  return norm("mlp_ln", x + dense("mlp_out", inner))


def layer_norm(x, scale, bias, eps: float):
  """LayerNorm with its statistics in float32 (bfloat16 compute keeps its dtype)."""
  h = x.astype(jnp.float32)
  mean = h.mean(-1, keepdims=True)
  var = jnp.square(h - mean).mean(-1, keepdims=True)
  return ((h - mean) * jax.lax.rsqrt(var + eps)).astype(x.dtype) * scale + bias


def pool(states, mask, pooling: str, normalize: bool):
  """The sentence vector of token states [n, L, hidden] (mask [n, L]): mean or [CLS], optionally L2-normalised."""
  if pooling == "cls":
    out = states[:, 0]
  else:
    weight = mask[..., None].astype(states.dtype)
    out = (states * weight).sum(1) / jnp.maximum(weight.sum(1), 1e-9)
  if normalize:  # (a padding row pools to zero: its norm's gradient must stay finite)
    out = out * jax.lax.rsqrt(jnp.maximum(jnp.square(out).sum(-1, keepdims=True), 1e-24))
  return out


@dataclasses.dataclass(frozen=True)
class TowerSpec:
  """model.text.tune / tune_layers / lora_rank, and the encoder's shape (model.text.arch, set by the
  trainer from the loaded encoder: heads, intermediate width, LayerNorm eps, pooling, normalize)."""

  mode: str  # "full" | "lora"
  layers: int  # top layers that train (the bottom ones are cached)
  rank: int = 8  # LoRA rank (mode "lora")
  tokens: int = 0  # token slots per item (model.text.tokens; set by the trainer)
  arch: tuple = ()  # (heads, intermediate, eps, pooling, normalize); () until the encoder is loaded
  # length buckets over the rows sorted by token count (model.text.buckets, set by the trainer):
  # ((end_row, width), ...); rows from the last end on (sharding padding) run at width 1
  buckets: tuple = ()

  def checked(self) -> "TowerSpec":
    if self.mode not in MODES:
      raise ValueError(f"model.text.tune={self.mode!r} is not valid; valid: {['', *MODES]} ('' = a frozen "
                       "sentence encoder: cached vectors)")
    if not isinstance(self.layers, int) or self.layers < 1:
      raise ValueError(f"model.text.tune_layers={self.layers!r} must be a positive integer (the encoder's top "
                       "layers that train)")
    if self.mode == "lora" and (not isinstance(self.rank, int) or self.rank < 1):
      raise ValueError(f"model.text.lora_rank={self.rank!r} must be a positive integer")
    return self

  def _arch(self) -> tuple:
    if len(self.arch) != 5 or not self.tokens:
      raise ValueError("model.text.arch and model.text.tokens are set by the trainer from the loaded text "
                       f"encoder (got arch={self.arch!r}, tokens={self.tokens}); a tuned text tower is built "
                       "inside a training run")
    return self.arch


def base_shapes(hidden: int, intermediate: int, layers: int) -> dict:
  """Shapes of the tuned layers' pretrained weights: {layer_i: {dense: {kernel, bias}, norm: {scale, bias}}}."""
  out = {}
  for i in range(layers):
    layer = {}
    for name in DENSES:
      fan_in = intermediate if name == "mlp_out" else hidden
      fan_out = intermediate if name == "mlp_in" else hidden
      layer[name] = {"kernel": (fan_in, fan_out), "bias": (fan_out,)}
    for name in NORMS:
      layer[name] = {"scale": (hidden,), "bias": (hidden,)}
    out[f"layer_{i}"] = layer
  return out


def length_buckets(lengths, tokens: int, max_buckets: int = 4) -> tuple:
  """((end_row, width), ...) over rows sorted by `lengths` (ascending): boundaries at 50 / 80 / 95 /
  100% of the rows, each bucket as wide as its longest row (at least 1); equal widths merge."""
  lengths = np.sort(np.asarray(lengths))
  n = len(lengths)
  ends = sorted({max(1, int(np.ceil(q * n))) for q in (0.5, 0.8, 0.95, 1.0)[-max_buckets:]})
  out = []
  for end in ends:
    width = int(min(tokens, max(1, lengths[end - 1])))
    if out and out[-1][1] == width:
      out[-1] = (end, width)
    else:
      out.append((end, width))
  return tuple(out)


class FrozenText(nn.Module):
  """The catalogue's data for a tuned tower (Roles.item_text): token states after the frozen bottom
  layers and their mask, rows sorted by token count (length buckets), `rank` (item id -> its row)
  and the tuned layers' pretrained weights. Zeros here; the trainer sets them."""

  vocab_size: int
  hidden: int
  spec: TowerSpec
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    tokens, (_, intermediate, *_) = self.spec.tokens, self.spec._arch()
    states = self.param("states", nn.initializers.zeros, (self.vocab_size, tokens, self.hidden), self.param_dtype)
    mask = self.param("mask", nn.initializers.zeros, (self.vocab_size, tokens), self.param_dtype)
    # float32: a param (ids below 2^24 are exact); the identity until the trainer sets it
    rank = self.param("rank", lambda _: jnp.arange(self.vocab_size, dtype=jnp.float32))
    shapes = base_shapes(self.hidden, intermediate, self.spec.layers)
    base = self.param("base", lambda _: jax.tree.map(lambda s: jnp.zeros(s, self.param_dtype), shapes,
                                                     is_leaf=lambda s: isinstance(s, tuple)))
    return states, mask, rank, base


class TextTower(nn.Module):
  """The trainable part of a tuned tower (Roles.item_tower): runs the top layers over the cached
  token states with base + delta (full) or base + LoRA (lora), bucket by bucket at each bucket's
  width, pools them and returns the vectors in item id order (through `rank`)."""

  spec: TowerSpec
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, states, mask, rank, base):
    heads, _, eps, pooling, normalize = self.spec._arch()
    zeros = lambda shape: (lambda _: jnp.zeros(shape, self.param_dtype))  # noqa: E731
    weights = []
    for i in range(self.spec.layers):
      w = base[f"layer_{i}"]
      if self.spec.mode == "full":
        delta = self.param(f"layer_{i}", lambda _, w=w: jax.tree.map(jnp.zeros_like, w))
        w = jax.tree.map(jnp.add, w, delta)
      lora = {}
      if self.spec.mode == "lora":
        hidden, r = w["query"]["kernel"].shape[0], self.spec.rank
        for name in ("query", "value"):
          a = self.param(f"layer_{i}_{name}_lora_a", nn.initializers.normal(hidden ** -0.5), (hidden, r),
                         self.param_dtype)
          b = self.param(f"layer_{i}_{name}_lora_b", zeros((r, hidden)))
          lora[name] = (a, b)
      weights.append((w, lora))

    def run(x, m):
      x, keep = x.astype(self.dtype), m[:, None, None, :] > 0
      for w, lora in weights:
        def dense(name, h, w=w, lora=lora):
          y = h @ w[name]["kernel"].astype(self.dtype) + w[name]["bias"].astype(self.dtype)
          if name in lora:
            a, b = lora[name]
            y = y + (h @ a.astype(self.dtype)) @ b.astype(self.dtype)
          return y

        def norm(name, h, w=w):
          return layer_norm(h, w[name]["scale"].astype(self.dtype), w[name]["bias"].astype(self.dtype), eps)

        x = bert_layer(x, keep, dense, norm, heads)
      return pool(x, m, pooling, bool(normalize))

    buckets = self.spec.buckets or ((states.shape[0], states.shape[1]),)
    out, start = [], 0
    for end, width in buckets + (((states.shape[0], 1),) if buckets[-1][0] < states.shape[0] else ()):
      if end > start:
        out.append(run(states[start:end, :width], mask[start:end, :width]))
      start = end
    sorted_vectors = jnp.concatenate(out) if len(out) > 1 else out[0]
    return jnp.take(sorted_vectors, rank.astype(jnp.int32), axis=0)
