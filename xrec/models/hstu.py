"""HSTU: Hierarchical Sequential Transduction Units (Zhai et al., "Actions Speak Louder than Words:
Trillion-Parameter Sequential Transducers for Generative Recommendations", ICML 2024).

Each block (pre-norm, residual):
    U, V, Q, K = SiLU(W_u LN(x)), SiLU(W_v .), SiLU(W_q .), SiLU(W_k .)   (the paper's fused W_uvqk)
    A = SiLU(Q K^T / sqrt(d_head) + rab[i - j]) / max_len  masked causal, pointwise: no softmax
    y = W_out(LN(A V) * U)                                      gated by U
    x = x + dropout(y)
The attention weights are SiLU of the scores plus a learned relative bias per block over the
distance i - j (0 .. max_len - 1), divided by the constant max_len (not normalised per row: the
paper's "pointwise aggregated attention"), over the valid earlier positions only. Inputs are item
embeddings (scaled by sqrt(embed)) plus learned absolute positions, as in xrec's SASRec, and the
last state is scored against the item table.

What this implementation leaves out, by the contract of xrec's encoders (item ids in, no
timestamps): the paper's relative bias over time buckets (the positional part is kept), and its
L2-normalised embeddings with a temperature (scores here are dot products with the item table, plus
a per-item bias unless model.output_bias=False, like every encoder here, so all objectives and
strategies apply unchanged).

Param tree:
  item_embed/embedding [vocab, embed], output_embed/embedding (untied only), output_bias [vocab]
  (model.output_bias), pos_embed/embedding [max_len, embed],
  block_{i}/ln_in, block_{i}/{gate,value,query,key}/{kernel [embed, heads * head], bias},
  block_{i}/rab [max_len] (relative attention bias), block_{i}/ln_attn, block_{i}/out/{kernel, bias}, final_ln
Roles: blocks; LoRA on gate / query / key / value / out (projections; lora.targets picks: default
query and value); adapters after each block (sublayers); prompts do not apply (the attention is not
a softmax over keys that prefix tokens could join).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xrec.models import base, common

Dtype = jnp.dtype


class HSTUBlock(nn.Module):
  """One HSTU layer: x [batch, len, embed] -> x + dropout(y) [batch, len (or 1), embed]."""

  num_heads: int
  head_dim: int
  max_len: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, valid, deterministic: bool = True, last_only: bool = False):
    """valid [batch, len]: real items; last_only: only the last position's output [batch, 1,
    embed] (it still attends to every position)."""
    batch, length, embed = x.shape
    h, d = self.num_heads, self.head_dim
    y = common.layer_norm("ln_in", self.dtype, self.param_dtype)(x)

    def proj(name):  # the paper's W_uvqk, one Dense per part (LoRA can target query / key / value)
      return nn.silu(nn.Dense(h * d, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
                              kernel_init=common.with_axes(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                              bias_init=common.with_axes(nn.initializers.zeros, ("mlp",)))(y))

    u, v, q, k = proj("gate"), proj("value"), proj("query"), proj("key")
    if last_only:
      u, q = u[:, -1:], q[:, -1:]
    queries = q.shape[1]
    q = q.reshape(batch, queries, h, d)
    k, v = k.reshape(batch, length, h, d), v.reshape(batch, length, h, d)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.asarray(d ** 0.5, self.dtype)
    rel = self.param("rab", common.with_axes(nn.initializers.zeros, (None,)), (self.max_len,),
                     self.param_dtype)
    qpos = jnp.arange(length - queries, length)[:, None]
    distance = qpos - jnp.arange(length)[None, :]  # i - j, >= 0 where the key is not in the future
    mask = (distance >= 0)[None, None] & valid[:, None, None, :]
    bias = rel[jnp.clip(distance, 0, self.max_len - 1)].astype(self.dtype)
    weights = nn.silu(scores + bias[None, None]) / jnp.asarray(self.max_len, self.dtype)
    weights = jnp.where(mask, weights, jnp.zeros((), self.dtype))
    att = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, queries, h * d)
    att = common.layer_norm("ln_attn", self.dtype, self.param_dtype)(att)
    out = nn.Dense(embed, dtype=self.dtype, param_dtype=self.param_dtype, name="out",
                   kernel_init=common.with_axes(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                   bias_init=common.with_axes(nn.initializers.zeros, ("embed",)))(att * u)
    residual = x[:, -1:] if last_only else x
    return residual + nn.Dropout(self.dropout)(out, deterministic=deterministic)


class HSTU(common.Encoder):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding."""

  num_layers: int = 2
  num_heads: int = 1
  head_dim: int = 0  # per-head width of U, V, Q, K; 0 = embed_dim // num_heads

  causal = True
  uses_mask_token = False
  fitted = False
  # padded keys are masked, biases depend on distances only and weights are divided by the
  # constant max_len: cutting left padding leaves every state unchanged
  trims_left_padding = True
  config_defaults = {"num_layers": 2, "num_heads": 1, "head_dim": 0}

  @classmethod
  def from_config(cls, common_fields: dict, own, **shape):
    return cls(**shape, **common_fields, num_layers=int(own.num_layers), num_heads=int(own.num_heads),
               head_dim=int(own.head_dim))

  @property
  def width(self) -> int:
    return self.head_dim or self.embed_dim // max(self.num_heads, 1)

  def roles(self) -> base.Roles:
    blocks = tuple(f"block_{i}" for i in range(self.num_layers))
    return base.Roles(
        **self.item_roles(),
        output_table=None if self.tie_embeddings else "output_embed/embedding",
        positions="pos_embed/embedding", blocks=blocks, final_norm="final_ln", sublayers=blocks,
        projections=tuple(f"{b}/{p}" for b in blocks for p in ("gate", "query", "key", "value", "out")),
        norms=tuple(f"{b}/{n}" for b in blocks for n in ("ln_in", "ln_attn")) + ("final_ln",))

  def setup(self):
    if self.num_layers < 1 or self.num_heads < 1:
      raise ValueError(f"hstu needs num_layers >= 1 and num_heads >= 1; got num_layers={self.num_layers}, "
                       f"num_heads={self.num_heads}")
    if not self.head_dim and self.embed_dim % self.num_heads:
      raise ValueError(f"model.embed_dim={self.embed_dim} is not divisible by model.hstu.num_heads="
                       f"{self.num_heads}; set model.hstu.head_dim")
    self.item_tables(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=common.with_axes(nn.initializers.normal(0.02), (None, "embed")))
    block = nn.remat(HSTUBlock, static_argnums=(3, 4)) if self.remat else HSTUBlock
    self.blocks = [block(self.num_heads, self.width, self.max_len, self.dropout, self.dtype, self.param_dtype,
                         name=f"block_{i}") for i in range(self.num_layers)]
    self.final_ln = common.layer_norm("final_ln", self.dtype, self.param_dtype)
    self.embed_dropout = nn.Dropout(self.dropout)

  def last_states(self, inputs):
    """The final state of every sequence [batch, embed]: the last block at the last position only."""
    return self.encode(inputs, deterministic=True, last_only=True)[:, -1]

  def encode(self, inputs, deterministic: bool = True, last_only: bool = False):
    """inputs [batch, len] -> hidden states [batch, len, embed]; last_only: [batch, 1, embed]."""
    base.check_inputs(inputs, self.max_len, shorter_ok=True)
    length = inputs.shape[-1]
    valid = inputs > 0
    x = self.embed_items(inputs) * jnp.asarray(self.embed_dim ** 0.5, self.dtype)
    x = x + self.pos_embed(jnp.arange(self.max_len - length, self.max_len))[None]
    x = self.embed_dropout(x, deterministic=deterministic)
    x = x * valid[..., None].astype(x.dtype)
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i, blk in enumerate(self.blocks):
      x = blk(x, valid, deterministic, last_only and i == len(self.blocks) - 1)
    return self.final_ln(x)
