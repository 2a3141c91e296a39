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

Optional transfer modules (all OFF by default, so the default tree and outputs
are exactly the plain SASRec). Each is zero-initialised where it joins the
residual stream, so a pretrained model with modules inserted computes exactly
the pretrained function at step 0:

  adapter_dim > 0   block_{i}/adapter_{attn,mlp}/{down,up}/{kernel,bias}
                    bottleneck after the attention and MLP sublayers; adapter_kind
                    "serial" (Houlsby: reads the sublayer output) or "parallel"
                    (He et al.: reads the sublayer input); `up` starts at zero
  lora_rank > 0     block_{i}/attn/lora_{query,key,value,out}/{a,b}/kernel and
                    block_{i}/mlp/lora_{wi,wo}/{a,b}/kernel for the projections named
                    in lora_targets: W x + B (A x), B starts at zero
  num_prompts > 0   block_{i}/attn/prompt [prompts, embed] learned prefix tokens seen
                    through the block's key/value projections, mixed in per head by
                    tanh(block_{i}/attn/prompt_gate [heads]), the gate starts at zero
  patch_dim > 0     block_{i}/patch/{down,up}/{kernel,bias}: PeterRec-style model
                    patch, a bottleneck in parallel with the whole residual block
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = jnp.dtype


def _init(init, axes):
  return nn.with_logical_partitioning(init, axes)


ADAPTER_KINDS = ("serial", "parallel")
LORA_TARGETS = ("query", "key", "value", "out", "wi", "wo")  # attention and MLP projections


class LoRA(nn.Module):
  """Low-rank update B (A x) of a projection: x [..., *in] -> [..., *features].

  `a` [*in, rank] is random, `b` [rank, *features] is zero, so the update is
  exactly zero until `b` is trained.
  """

  rank: int
  features: tuple[int, ...]
  in_axes: tuple[int, ...]  # axes of x contracted by the projection
  in_names: tuple[str, ...]  # logical names of those axes
  out_names: tuple[str, ...]  # logical names of `features`
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.DenseGeneral(self.rank, axis=self.in_axes, use_bias=False, dtype=self.dtype,
                        param_dtype=self.param_dtype, name="a",
                        kernel_init=_init(nn.initializers.lecun_normal(), (*self.in_names, None)))(x)
    return nn.DenseGeneral(self.features, use_bias=False, dtype=self.dtype,
                           param_dtype=self.param_dtype, name="b",
                           kernel_init=_init(nn.initializers.zeros, (None, *self.out_names)))(h)


class Adapter(nn.Module):
  """Bottleneck x [..., embed] -> up(gelu(down(x))) [..., embed]; `up` is zero so it starts at 0."""

  bottleneck: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    embed = x.shape[-1]
    h = nn.Dense(self.bottleneck, dtype=self.dtype, param_dtype=self.param_dtype, name="down",
                 kernel_init=_init(nn.initializers.lecun_normal(), ("embed", None)),
                 bias_init=_init(nn.initializers.zeros, (None,)))(x)
    h = nn.gelu(h)
    return nn.Dense(embed, dtype=self.dtype, param_dtype=self.param_dtype, name="up",
                    kernel_init=_init(nn.initializers.zeros, (None, "embed")),
                    bias_init=_init(nn.initializers.zeros, ("embed",)))(h)


class Attention(nn.Module):
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lora_rank: int = 0
  lora_targets: tuple[str, ...] = ()
  num_prompts: int = 0

  @nn.compact
  def __call__(self, x, mask):
    """x: [batch, len, embed]; mask: [batch, 1, len, len] bool (True = may attend)."""
    embed = x.shape[-1]
    if embed % self.num_heads:
      raise ValueError(f"embed_dim {embed} is not divisible by num_heads {self.num_heads}")
    head_dim = embed // self.num_heads

    def lora(name, features, in_axes, in_names, out_names):
      if not (self.lora_rank and name in self.lora_targets):
        return None
      return LoRA(self.lora_rank, features, in_axes, in_names, out_names, self.dtype,
                  self.param_dtype, name=f"lora_{name}")

    def proj(name):
      dense = nn.DenseGeneral(
          (self.num_heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype, name=name,
          kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "heads", "kv")),
          bias_init=_init(nn.initializers.zeros, ("heads", "kv")))
      low_rank = lora(name, (self.num_heads, head_dim), (-1,), ("embed",), ("heads", "kv"))
      # one function for the sequence and for prompt tokens, so both see the same (adapted) weights
      return (lambda t: dense(t) + low_rank(t)) if low_rank else dense

    project = {name: proj(name) for name in ("query", "key", "value")}
    q, k, v = (project[name](x) for name in ("query", "key", "value"))  # [batch, len, heads, head_dim]
    out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    if self.num_prompts:
      out = out + self._prompt_attention(q, project["key"], project["value"], embed)
    out_dense = nn.DenseGeneral(
        embed, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name="out",
        kernel_init=_init(nn.initializers.xavier_uniform(), ("heads", "kv", "embed")),
        bias_init=_init(nn.initializers.zeros, ("embed",)))
    y = out_dense(out)
    low_rank = lora("out", (embed,), (-2, -1), ("heads", "kv"), ("embed",))
    return y + low_rank(out) if low_rank else y

  def _prompt_attention(self, q, key_proj, value_proj, embed):
    """Gated attention of every query to `num_prompts` learned prefix tokens.

    q [batch, len, heads, head_dim] -> [batch, len, heads, head_dim]. The prefix has
    its own softmax and a per-head tanh gate that starts at 0 (zero-init gating as in
    LLaMA-Adapter), so the sequence attention is untouched at step 0.
    """
    prompts = self.param("prompt", _init(nn.initializers.normal(1.0), (None, "embed")),
                         (self.num_prompts, embed), self.param_dtype)
    gate = self.param("prompt_gate", _init(nn.initializers.zeros, ("heads",)),
                      (self.num_heads,), self.param_dtype)
    prompts = prompts.astype(self.dtype)
    k_prompt, v_prompt = key_proj(prompts), value_proj(prompts)  # [prompts, heads, head_dim]
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    weights = jax.nn.softmax(jnp.einsum("blhd,phd->bhlp", q * scale, k_prompt).astype(jnp.float32), -1)
    mixed = jnp.einsum("bhlp,phd->blhd", weights.astype(v_prompt.dtype), v_prompt)
    return jnp.tanh(gate).astype(mixed.dtype)[:, None] * mixed


class MLP(nn.Module):
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  lora_rank: int = 0
  lora_targets: tuple[str, ...] = ()

  @nn.compact
  def __call__(self, x, deterministic):
    embed = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="wi",
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("embed", "mlp")),
                 bias_init=_init(nn.initializers.zeros, ("mlp",)))(x)
    if self.lora_rank and "wi" in self.lora_targets:
      h = h + LoRA(self.lora_rank, (self.mlp_dim,), (-1,), ("embed",), ("mlp",), self.dtype,
                   self.param_dtype, name="lora_wi")(x)
    h = nn.gelu(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    y = nn.Dense(embed, dtype=self.dtype, param_dtype=self.param_dtype, name="wo",
                 kernel_init=_init(nn.initializers.xavier_uniform(), ("mlp", "embed")),
                 bias_init=_init(nn.initializers.zeros, ("embed",)))(h)
    if self.lora_rank and "wo" in self.lora_targets:
      y = y + LoRA(self.lora_rank, (embed,), (-1,), ("mlp",), ("embed",), self.dtype,
                   self.param_dtype, name="lora_wo")(h)
    return y


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
  adapter_dim: int = 0
  adapter_kind: str = "serial"
  lora_rank: int = 0
  lora_targets: tuple[str, ...] = ()
  num_prompts: int = 0
  patch_dim: int = 0

  def _adapted(self, name, sublayer_in, sublayer_out):
    """Sublayer output plus its adapter (if any): serial reads the output, parallel the input."""
    if not self.adapter_dim:
      return sublayer_out
    adapter = Adapter(self.adapter_dim, self.dtype, self.param_dtype, name=name)
    return sublayer_out + adapter(sublayer_out if self.adapter_kind == "serial" else sublayer_in)

  @nn.compact
  def __call__(self, x, mask, deterministic):
    block_in = x
    h = _layer_norm("ln_attn", self.dtype, self.param_dtype)(x)
    a = Attention(self.num_heads, self.dtype, self.param_dtype, self.lora_rank, self.lora_targets,
                  self.num_prompts, name="attn")(h, mask)
    a = self._adapted("adapter_attn", h, a)
    x = x + nn.Dropout(self.dropout)(a, deterministic=deterministic)
    h = _layer_norm("ln_mlp", self.dtype, self.param_dtype)(x)
    m = MLP(self.mlp_dim, self.dropout, self.dtype, self.param_dtype, self.lora_rank,
            self.lora_targets, name="mlp")(h, deterministic)
    m = self._adapted("adapter_mlp", h, m)
    out = x + nn.Dropout(self.dropout)(m, deterministic=deterministic)
    if self.patch_dim:  # PeterRec parallel patch: a bottleneck beside the whole residual block
      out = out + Adapter(self.patch_dim, self.dtype, self.param_dtype, name="patch")(block_in)
    return out


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
  # Optional transfer modules (xrec/transfer), all off by default; see the module docstring.
  adapter_dim: int = 0  # > 0: bottleneck adapters after attention and MLP in every block
  adapter_kind: str = "serial"  # serial | parallel
  lora_rank: int = 0  # > 0: low-rank updates on the projections in lora_targets
  lora_targets: tuple[str, ...] = ("query", "value")  # subset of LORA_TARGETS
  num_prompts: int = 0  # > 0: learned prefix tokens per block, zero-gated
  patch_dim: int = 0  # > 0: PeterRec-style patch beside every block

  def _check_transfer_fields(self):
    if self.adapter_kind not in ADAPTER_KINDS:
      raise ValueError(f"Unknown adapter_kind {self.adapter_kind!r}; valid: {list(ADAPTER_KINDS)}")
    unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
    if unknown:
      raise ValueError(f"Unknown lora_targets {unknown}; valid: {list(LORA_TARGETS)}")
    if self.lora_rank and not self.lora_targets:
      raise ValueError(f"lora_rank={self.lora_rank} needs at least one of lora_targets; "
                       f"valid: {list(LORA_TARGETS)}")
    for name in ("adapter_dim", "lora_rank", "num_prompts", "patch_dim"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)} must be >= 0 (0 = off)")

  def setup(self):
    self._check_transfer_fields()
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
                         self.adapter_dim, self.adapter_kind, self.lora_rank, tuple(self.lora_targets),
                         self.num_prompts, self.patch_dim, name=f"block_{i}")
                   for i in range(self.num_layers)]
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
