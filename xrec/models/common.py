"""Pieces every encoder shares (item tables, scoring, norms, logical axes) and param trees by name:
flatten to `a/b/c` paths and strict loading of a checkpoint into a model."""

from __future__ import annotations

import contextlib
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xrec.models import text_tower


def with_axes(init, axes):
  """An initializer whose param carries logical axis names (sharding rules map them to the mesh)."""
  return nn.with_logical_partitioning(init, axes)


def layer_norm(name: str, dtype, param_dtype) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=with_axes(nn.initializers.ones, ("embed",)),
                      bias_init=with_axes(nn.initializers.zeros, ("embed",)))


def item_embedding(vocab_size: int, embed_dim: int, dtype, param_dtype, name: str | None = None,
                   init_std: float = 0.0) -> nn.Embed:
  """An item table [vocab, embed] split on 'vocab' (catalogues of millions of items shard), drawn
  from N(0, init_std^2) (0: N(0, 1/embed))."""
  init = with_axes(nn.initializers.normal(stddev=init_std or embed_dim ** -0.5), ("vocab", "embed"))
  return nn.Embed(vocab_size, embed_dim, dtype=dtype, param_dtype=param_dtype, embedding_init=init, name=name)


def output_bias_param(module: nn.Module, vocab_size: int, param_dtype):
  """The per-item output bias [vocab] (zeros), created in the calling module's scope."""
  return module.param("output_bias", with_axes(nn.initializers.zeros, ("vocab",)), (vocab_size,), param_dtype)


ITEM_REPRS = ("id", "text", "text+id")
TEXT_DATA = ("item_embed/table", "item_embed/text")  # TextItems' catalogue data, frozen or tuned tower


class MoEAdaptor(nn.Module):
  """UniSRec's mixture-of-experts adaptor with parametric whitening (Hou et al., "Towards
  Universal Sequence Representation Learning for Recommender Systems", KDD 2022, eqs. 1-3): expert
  k maps a text vector x to (x - bias_k) kernel_k; a softmax gate over x @ gate weighs the experts.
  The gate starts at zero, so at step 0 every expert weighs 1 / experts."""

  embed_dim: int
  experts: int = 8
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    text_dim = x.shape[-1]
    bias = self.param("bias", with_axes(nn.initializers.zeros, (None, None)), (self.experts, text_dim),
                      self.param_dtype)
    kernel = self.param("kernel", with_axes(nn.initializers.normal(self.embed_dim ** -0.5), (None, None, "embed")),
                        (self.experts, text_dim, self.embed_dim), self.param_dtype)
    gate = self.param("gate", with_axes(nn.initializers.zeros, (None, None)), (text_dim, self.experts),
                      self.param_dtype)
    x = x.astype(self.dtype)
    weights = jax.nn.softmax(x @ gate.astype(self.dtype), axis=-1)  # [..., experts]
    experts = jnp.einsum("...t,kte->...ke", x, kernel.astype(self.dtype)) - jnp.einsum(
        "kt,kte->ke", bias.astype(self.dtype), kernel.astype(self.dtype))
    return jnp.einsum("...k,...ke->...e", weights, experts)


class TextItems(nn.Module):
  """Items represented by their text (model.item_repr "text" or "text+id"), in place of an ID
  table: `table` [vocab, text_dim] holds each item's text embedding from a pretrained sentence
  encoder (xrec/train/item_text.py sets it from the current catalogue: it is never trained and
  never loaded from a checkpoint), `adaptor` (MoEAdaptor) maps it to the model's width, and with
  ids an ID table `id_embed` is added (text + ID, transductive). Text only is inductive: any item
  with a text is scored, seen in training or not. `embedding` is the adapted table [vocab, embed]
  (what a tied encoder scores against), calling it adapts the rows of `ids`.

  With a tuned text tower (`tower_spec`, model.text.tune: xrec/models/text_tower.py) the text vectors
  are computed every step: `text` holds the catalogue's cached token states and the tuned layers'
  pretrained weights (set like `table`, never trained), `tower` what trains on top of them."""

  vocab_size: int
  text_dim: int
  embed_dim: int
  experts: int = 8
  with_ids: bool = False
  mask_id: int = 0  # encoders with a [MASK] token: its id, which gets a learned row (`mask_embed`)
  tower_spec: text_tower.TowerSpec | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.tower_spec is None:
      self.table = self.param("table", with_axes(nn.initializers.zeros, ("vocab", None)),
                              (self.vocab_size, self.text_dim), self.param_dtype)
    else:
      self.text = text_tower.FrozenText(self.vocab_size, self.text_dim, self.tower_spec, self.param_dtype)
      self.tower = text_tower.TextTower(self.tower_spec, self.dtype, self.param_dtype)
    self.adaptor = MoEAdaptor(self.embed_dim, self.experts, self.dtype, self.param_dtype)
    if self.with_ids:
      self.id_embed = item_embedding(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)
    if self.mask_id:  # the [MASK] token has no text: its own row
      self.mask_embed = self.param("mask_embed", with_axes(nn.initializers.normal(self.embed_dim ** -0.5), ("embed",)),
                                   (self.embed_dim,), self.param_dtype)

  def text_vectors(self):
    """[vocab, text_dim]: the items' text vectors (the frozen table, or the tuned tower's output)."""
    if self.tower_spec is None:
      return self.table
    return self.tower(*self.text())

  def __call__(self, ids):
    rows = self.adaptor(jnp.take(self.text_vectors(), ids, axis=0))
    if self.with_ids:
      rows = rows + self.id_embed(ids)
    if self.mask_id:
      rows = jnp.where((ids == self.mask_id)[..., None], self.mask_embed.astype(rows.dtype), rows)
    return rows

  @property
  def embedding(self):
    table = self.adaptor(self.text_vectors())
    if self.with_ids:
      table = table + self.id_embed.embedding.astype(table.dtype)
    if self.mask_id:
      table = table.at[self.mask_id].set(self.mask_embed.astype(table.dtype))
    return table


class ScoresItems:
  """The contract's scoring half for encoders with `item_embed`, optional `output_embed`
  (tie_embeddings=False) and `output_bias` (set in setup): output_table, __call__ and a causal
  score_last from the last position. Mixed into the encoders' linen modules."""

  def output_table(self):
    """Item table used for scoring: [vocab, embed] and bias [vocab] (with model.item_columns:
    [vocab, len(item_columns)], scored against those dims of the hidden states)."""
    table = self.item_embed.embedding if self.tie_embeddings else self.output_embed.embedding
    if self.output_bias is None:  # model.output_bias=False: a constant, no param and no gradient
      return table, jnp.zeros(table.shape[:1], jnp.float32)
    return table, self.output_bias

  def _tuned_tower(self) -> bool:
    return getattr(self, "text_tower_spec", None) is not None

  @contextlib.contextmanager
  def _shared_table(self, table):
    """Within it, embed_items reads the inputs' rows from `table` (the tied output table) instead
    of computing them: a tuned text tower runs over the catalogue once per call, not once for the
    inputs and again for the scores (whose backward passes XLA cannot merge). Only for tuned
    towers; the rows are the same (text models tie their tables)."""
    object.__setattr__(self, "_table_for_inputs", table if self._tuned_tower() else None)
    try:
      yield
    finally:
      object.__setattr__(self, "_table_for_inputs", None)

  def embed_items(self, inputs):
    """The item table's rows of `inputs` [..., embed] (item_columns: placed in those dims, 0 elsewhere)."""
    shared = getattr(self, "_table_for_inputs", None)
    if shared is not None:
      return jnp.take(shared, inputs, axis=0)
    rows = self.item_embed(inputs)
    columns = getattr(self, "item_columns", ())
    if not columns:
      return rows
    out = jnp.zeros(rows.shape[:-1] + (self.embed_dim,), rows.dtype)
    return out.at[..., jnp.asarray(columns)].set(rows)

  def scoring_hidden(self, hidden):
    """The dims of the hidden states the output table scores (all, or model.item_columns)."""
    columns = getattr(self, "item_columns", ())
    return hidden[..., jnp.asarray(columns)] if columns else hidden

  def __call__(self, inputs, deterministic: bool = True):
    """Returns (hidden [batch, len, embed], item table [vocab, embed], bias [vocab])."""
    table, bias = self.output_table()
    with self._shared_table(table):
      hidden = self.encode(inputs, deterministic)
    return self.scoring_hidden(hidden), table, bias

  def score_last(self, inputs):
    """Scores of every item as the next one after each sequence: [batch, vocab] float32."""
    table, bias = self.output_table()
    with self._shared_table(table):
      hidden = self.last_states(self.scoring_inputs(inputs))
    return score_items(self.scoring_hidden(hidden), table, bias)

  def last_states(self, inputs):
    """[batch, embed]: the state score_last scores from (an encoder may compute it for less)."""
    return self.encode(inputs, deterministic=True)[:, -1]

  def scoring_inputs(self, inputs):
    """What score_last encodes (causal encoders: the inputs themselves)."""
    return inputs

  def item_roles(self) -> dict:
    """The item roles of `item_tables`' params (base.Roles fields)."""
    repr_ = getattr(self, "item_repr", "id")
    bias = {"output_bias": "output_bias" if self.use_output_bias else None}
    if repr_ == "id":
      return {"item_table": "item_embed/embedding", **bias}
    tuned = self._tuned_tower()
    return {**bias, "item_table": "item_embed/id_embed/embedding" if repr_ == "text+id" else None,
            "item_text": "item_embed/text" if tuned else "item_embed/table", "item_adaptor": "item_embed/adaptor",
            "item_tower": "item_embed/tower" if tuned else None, "item_text_data": TEXT_DATA}

  def item_tables(self, vocab_size: int, embed_dim: int, dtype, param_dtype):
    """Creates item_embed (an ID table, or TextItems for model.item_repr text / text+id),
    output_embed (untied only) and output_bias (model.output_bias; None without); call from setup."""
    width = len(getattr(self, "item_columns", ())) or embed_dim
    repr_ = getattr(self, "item_repr", "id")
    if repr_ == "id":
      self.item_embed = item_embedding(vocab_size, width, dtype, param_dtype, init_std=self.item_init_std)
    else:
      mask_id = self.num_items + 1 if self.uses_mask_token else 0
      self.item_embed = TextItems(vocab_size, self.text_dim, embed_dim, self.text_experts, repr_ == "text+id",
                                  mask_id, self.text_tower_spec, dtype, param_dtype)
    if not self.tie_embeddings:
      self.output_embed = item_embedding(vocab_size, width, dtype, param_dtype, init_std=self.item_init_std)
    self.output_bias = output_bias_param(self, vocab_size, param_dtype) if self.use_output_bias else None


class Encoder(ScoresItems, nn.Module):
  """The fields every ID/text sequence encoder shares (config.model's common fields plus the
  catalogue's shape); an encoder subclasses it and adds only its own fields (config.model.<name>)."""

  vocab_size: int  # rows of the item table (items + padding [+ mask], rounded up for sharding)
  max_len: int
  num_items: int
  embed_dim: int = 64
  dropout: float = 0.2
  tie_embeddings: bool = True
  remat: bool = False
  dtype: Any = jnp.float32  # compute dtype (bfloat16 for mixed precision)
  param_dtype: Any = jnp.float32
  item_columns: tuple = ()  # the embedding dims the item tables keep (model.item_columns; () = all)
  item_repr: str = "id"  # model.item_repr: items by an ID table, their text (TextItems) or both
  text_dim: int = 0  # width of the item text embeddings (model.text.dim, set from the text encoder)
  text_experts: int = 8  # experts of the text adaptor (model.text.experts)
  text_tower_spec: Any = None  # a tuned text tower (text_tower.TowerSpec from model.text.tune ...); None: frozen
  item_init_std: float = 0.0  # model.item_init_std: ID models' item (and output) table init N(0, std^2); 0 = 1/sqrt(embed)
  use_output_bias: bool = True  # model.output_bias: a learned per-item output bias (False: none, scores are dot products)


def score_items(hidden, table, bias):
  """hidden [..., embed] x table [vocab, embed] -> logits [..., vocab], fp32 accumulation."""
  logits = jnp.einsum("...d,vd->...v", hidden, table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return logits + bias.astype(jnp.float32)


def flatten(tree, prefix: str = "") -> dict:
  """Nested dict -> {"a/b/c": leaf}."""
  out = {}
  for k, v in tree.items():
    name = f"{prefix}{k}"
    if isinstance(v, dict) or hasattr(v, "items") and not hasattr(v, "shape"):
      out.update(flatten(v, name + "/"))
    else:
      out[name] = v
  return out


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    *parents, leaf = path.split("/")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def param_count(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


def merge_params(init_params, ckpt_params, dont_load=()) -> dict:
  """A tree shaped exactly like `init_params` with values from `ckpt_params`.

  Paths matching a `dont_load` regex keep their fresh init. Any other path
  present on only one side, or with a different shape, is an error that lists
  each as `+ path shape` (checkpoint only) / `- path shape` (model only).
  """
  model, ckpt = flatten(init_params), flatten(ckpt_params)
  skip = [re.compile(p) for p in dont_load]

  def skipped(path):
    return any(r.fullmatch(path) for r in skip)

  problems = []
  for path in sorted(set(ckpt) - set(model)):
    if not skipped(path):
      problems.append(f"+ {path} {tuple(ckpt[path].shape)}")
  for path in sorted(set(model) - set(ckpt)):
    if not skipped(path):
      problems.append(f"- {path} {tuple(model[path].shape)}")
  for path in sorted(set(model) & set(ckpt)):
    if not skipped(path) and tuple(model[path].shape) != tuple(ckpt[path].shape):
      problems.append(f"+ {path} {tuple(ckpt[path].shape)}\n- {path} {tuple(model[path].shape)}")
  if problems:
    raise ValueError("Checkpoint does not fit the model (+ checkpoint only, - model only):\n"
                     + "\n".join(problems))
  merged = {p: (model[p] if skipped(p) or p not in ckpt else ckpt[p]) for p in model}
  return unflatten(merged)
