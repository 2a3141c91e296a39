"""SASRec (Kang & McAuley, 2018): causal self-attention over the item sequence.

Functional linen module. Param tree (readable paths, logical axes in brackets):

  item_embed/embedding        [vocab, embed]   shared by input and output (tied)
  output_embed/embedding      [vocab, embed]   only when tie_embeddings=False
  output_bias                 [vocab]
  pos_embed/embedding         [max_len, embed]
  block_{i}/ln_attn/{scale,bias}, block_{i}/attn/{query,key,value}/{kernel,bias}
      kernel [embed, heads, kv], out/kernel [heads, kv, embed]
  block_{i}/ln_mlp/{scale,bias}, block_{i}/mlp/wi/kernel [embed, mlp], wo/kernel [mlp, embed]
  final_ln/{scale,bias}

Blocks are unrolled (`block_0`, `block_1`, ...) so transfer strategies can
address each by path. Pre-LN residual blocks; padded positions (item id 0) are
zeroed and never attended to.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _init(init, axes):
  return nn.with_logical_partitioning(init, axes)


class Attention(nn.Module):
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    """x: [batch, len, embed]; mask: [batch, 1, len, len] bool (True = may attend)."""
    embed = x.shape[-1]
    if embed % self.num_heads:
      raise ValueError(f"embed_dim {embed} is not divisible by num_heads {self.num_heads}")
    head_dim = embed // self.num_heads

    def proj(name):
      return nn.DenseGeneral(
          (self.num_heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype, name=name,
          kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "heads", "kv")),
          bias_init=_init(nn.initializers.zeros, ("heads", "kv")))(x)

    q, k, v = proj("query"), proj("key"), proj("value")  # [batch, len, heads, head_dim]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return nn.DenseGeneral(
        embed, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name="out",
        kernel_init=_init(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=_init(nn.initializers.zeros, ("embed",)))(out)


class MLP(nn.Module):
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic):
    embed = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="wi",
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                 bias_init=_init(nn.initializers.zeros, ("mlp",)))(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(embed, dtype=self.dtype, param_dtype=self.param_dtype, name="wo",
                    kernel_init=_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                    bias_init=_init(nn.initializers.zeros, ("embed",)))(h)


def _layer_norm(name, dtype, param_dtype):
  return nn.LayerNorm(epsilon=1e-6, dtype=dtype, param_dtype=param_dtype, name=name,
                      scale_init=_init(nn.initializers.ones, ("embed",)),
                      bias_init=_init(nn.initializers.zeros, ("embed",)))


class Block(nn.Module):
  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask, deterministic):
    h = _layer_norm("ln_attn", self.dtype, self.param_dtype)(x)
    h = Attention(self.num_heads, self.dtype, self.param_dtype, name="attn")(h, mask)
    x = x + nn.Dropout(self.dropout)(h, deterministic=deterministic)
    h = _layer_norm("ln_mlp", self.dtype, self.param_dtype)(x)
    h = MLP(self.mlp_dim, self.dropout, self.dtype, self.param_dtype, name="mlp")(h, deterministic)
    return x + nn.Dropout(self.dropout)(h, deterministic=deterministic)


class SASRec(nn.Module):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding."""

  vocab_size: int  # rows of the item table: num_items + 1 (padding) rounded up for sharding
  max_len: int
  embed_dim: int = 64
  num_layers: int = 2
  num_heads: int = 1
  mlp_dim: int = 256
  dropout: float = 0.2
  tie_embeddings: bool = True
  remat: bool = False
  dtype: Dtype = jnp.float32  # compute dtype (bfloat16 for mixed precision)
  param_dtype: Dtype = jnp.float32

  def setup(self):
    emb_init = _init(nn.initializers.normal(stddev=self.embed_dim ** -0.5), ("vocab", "embed"))
    self.item_embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                               param_dtype=self.param_dtype, embedding_init=emb_init)
    if not self.tie_embeddings:
      self.output_embed = nn.Embed(self.vocab_size, self.embed_dim, dtype=self.dtype,
                                   param_dtype=self.param_dtype, embedding_init=emb_init)
    self.output_bias = self.param("output_bias", _init(nn.initializers.zeros, ("vocab",)),
                                  (self.vocab_size,), self.param_dtype)
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=_init(nn.initializers.normal(0.02), (None, "embed")))
    block = nn.remat(Block, static_argnums=(3,)) if self.remat else Block
    self.blocks = [block(self.num_heads, self.mlp_dim, self.dropout, self.dtype, self.param_dtype,
                         name=f"block_{i}") for i in range(self.num_layers)]
    self.final_ln = _layer_norm("final_ln", self.dtype, self.param_dtype)
    self.embed_dropout = nn.Dropout(self.dropout)

  def encode(self, inputs, deterministic: bool = True):
    """inputs [batch, len] -> hidden states [batch, len, embed] (compute dtype)."""
    if inputs.shape[-1] != self.max_len:
      raise ValueError(f"inputs length {inputs.shape[-1]} != model max_len {self.max_len}")
    valid = inputs > 0
    x = self.item_embed(inputs) * jnp.asarray(self.embed_dim ** 0.5, self.dtype)
    x = x + self.pos_embed(jnp.arange(self.max_len))[None]
    x = self.embed_dropout(x, deterministic=deterministic)
    x = x * valid[..., None].astype(x.dtype)
    causal = jnp.tril(jnp.ones((self.max_len, self.max_len), bool))
    mask = causal[None, None] & valid[:, None, None, :]
    # a fully padded query row attends to itself so softmax stays finite
    mask = mask | jnp.eye(self.max_len, dtype=bool)[None, None]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for blk in self.blocks:
      x = blk(x, mask, deterministic)
    return self.final_ln(x)

  def output_table(self):
    """Item table used for scoring: [vocab, embed] and bias [vocab]."""
    table = self.item_embed.embedding if self.tie_embeddings else self.output_embed.embedding
    return table, self.output_bias

  def __call__(self, inputs, deterministic: bool = True):
    """Returns (hidden [batch, len, embed], item table [vocab, embed], bias [vocab])."""
    hidden = self.encode(inputs, deterministic)
    table, bias = self.output_table()
    return hidden, table, bias

  def score_last(self, inputs):
    """Scores of every item for the next position: [batch, vocab] float32."""
    hidden = self.encode(inputs, deterministic=True)[:, -1]
    table, bias = self.output_table()
    return score_items(hidden, table, bias)


def score_items(hidden, table, bias):
  """hidden [..., embed] x table [vocab, embed] -> logits [..., vocab], fp32 accumulation."""
  logits = jnp.einsum("...d,vd->...v", hidden, table.astype(hidden.dtype),
                      preferred_element_type=jnp.float32)
  return logits + bias.astype(jnp.float32)
