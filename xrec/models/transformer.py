"""Pre-LN Transformer blocks and the encoder body shared by SASRec (causal) and BERT4Rec
(bidirectional). No transfer code: adapters, LoRA, prompts and patches are inserted from
outside (xrec/transfer/insert/peft.py) at the sublayers, projections and attention modules the
encoder's roles name.

Param tree of the body (logical axes in brackets):

  item_embed/embedding        [vocab, embed]   input items; also the output table when tied
  output_embed/embedding      [vocab, embed]   only when tie_embeddings=False
  output_bias                 [vocab]          only when model.output_bias (the default)
  pos_embed/embedding         [max_len, embed]
  block_{i}/ln_attn/{scale,bias}, block_{i}/attn/{query,key,value}/{kernel,bias}
      kernel [embed, heads, kv], out/kernel [heads, kv, embed]
  block_{i}/ln_mlp/{scale,bias}, block_{i}/mlp/wi/kernel [embed, mlp], wo/kernel [mlp, embed]
  final_ln/{scale,bias}

Blocks are unrolled (`block_0`, `block_1`, ...) so transfer strategies can address each by
path. Padded positions (item id 0) are zeroed and never attended to.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from xrec.models import base, common

Dtype = jnp.dtype


class Attention(nn.Module):
  """Multi-head self-attention with named projections query, key, value [embed -> heads, kv]
  and out [heads, kv -> embed] (the points where LoRA and prompts attach). `dropout` drops the
  attention weights in training (model.<name>.attention_dropout="weights"); `out_init_std` > 0
  starts `out` at N(0, out_init_std^2) instead of Xavier uniform."""

  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  head_dim: int = 0  # 0: embed // num_heads
  dropout: float = 0.0
  out_init_std: float = 0.0

  @nn.compact
  def __call__(self, x, mask, kv=None, deterministic: bool = True):
    """x: [batch, len, embed] (the queries; also keys and values unless `kv` [batch, kv_len, embed]
    is given); mask: [batch, 1, len, kv_len] bool (True = may attend)."""
    kv = x if kv is None else kv
    embed = x.shape[-1]
    if not self.head_dim and embed % self.num_heads:
      raise ValueError(f"embed_dim {embed} is not divisible by num_heads {self.num_heads}")
    head_dim = self.head_dim or embed // self.num_heads

    def proj(name):
      return nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype, param_dtype=self.param_dtype,
                             name=name, kernel_init=common.with_axes(nn.initializers.xavier_uniform(),
                                                                     ("embed", "heads", "kv")),
                             bias_init=common.with_axes(nn.initializers.zeros, ("heads", "kv")))

    q, k, v = proj("query")(x), proj("key")(kv), proj("value")(kv)  # [batch, len, heads, head_dim]
    if self.dropout and not deterministic:  # the weights themselves are needed to drop them
      scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim ** -0.5
      scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
      weights = nn.Dropout(self.dropout)(jax.nn.softmax(scores, axis=-1), deterministic=False)
      out = jnp.einsum("bhqk,bkhd->bqhd", weights.astype(v.dtype), v)
    else:
      out = jax.nn.dot_product_attention(q, k, v, mask=mask)
    return nn.DenseGeneral(embed, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype, name="out",
                           kernel_init=common.with_axes(_kernel_init(self.out_init_std), ("heads", "kv", "embed")),
                           bias_init=common.with_axes(nn.initializers.zeros, ("embed",)))(out)


def _kernel_init(std: float):
  """N(0, std^2) when std > 0, else Xavier uniform (the default)."""
  return nn.initializers.normal(std) if std > 0 else nn.initializers.xavier_uniform()


# model.<transformer>.block: how a block wires its sublayers (Block's docstring)
BLOCKS = ("pre_ln", "reference")


# model.<transformer>.positions: which position embedding each slot of a window reads. "right": the
# newest item is always the last position (max_len - 1), as the inputs are right-aligned; "left": the
# oldest item of the window is position 0 and the others count on from it, so the newest item's
# position is the window's length - 1 (the layout of SASRec+'s and BERT4Rec's reference code, which
# pad on the right). Either way a slot's position does not depend on the padding before it.
POSITIONS = ("right", "left")
# model.<transformer>.attention_dropout: where the attention sublayer's dropout acts. "output": on
# its output, before the residual sum (the default); "weights": on the attention weights, the
# output undropped (SASRec's reference code, through torch's MultiheadAttention); "both": on the
# weights and on the output (BERT: attention_probs_dropout and the self-output's hidden dropout).
ATTENTION_DROPOUT = ("output", "weights", "both")


def check_choice(model_name: str, field: str, value: str, valid: tuple) -> str:
  """`value` if it is one of `valid`, else an error naming the field and the valid values."""
  if value not in valid:
    raise ValueError(f"model.{model_name}.{field}={value!r} is not valid; valid: {list(valid)}")
  return value


def check_std(model_name: str, std) -> float:
  """kernel_init_std as a float >= 0 (0: Xavier uniform), else an error naming the field."""
  if not isinstance(std, (int, float)) or isinstance(std, bool) or not std >= 0:
    raise ValueError(f"model.{model_name}.kernel_init_std={std!r} is not valid; valid: a number >= 0 "
                     "(0: Xavier uniform)")
  return float(std)


class MLP(nn.Module):
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  activation: str = "gelu"  # gelu | relu
  init_std: float = 0.0  # > 0: kernels N(0, init_std^2); 0: Xavier uniform

  @nn.compact
  def __call__(self, x, deterministic):
    embed = x.shape[-1]
    h = nn.Dense(self.mlp_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="wi",
                 kernel_init=common.with_axes(_kernel_init(self.init_std), ("embed", "mlp")),
                 bias_init=common.with_axes(nn.initializers.zeros, ("mlp",)))(x)
    h = nn.relu(h) if self.activation == "relu" else nn.gelu(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return nn.Dense(embed, dtype=self.dtype, param_dtype=self.param_dtype, name="wo",
                    kernel_init=common.with_axes(_kernel_init(self.init_std), ("mlp", "embed")),
                    bias_init=common.with_axes(nn.initializers.zeros, ("embed",)))(h)


class Block(nn.Module):
  """`attn` and `mlp` are the block's sublayers; `block` wires them:

    pre_ln     x + attn(ln(x)), then + mlp(ln(.)) with a GELU feed-forward (the default)
    reference  the block of SASRec's reference code (Kang & McAuley's TensorFlow, pmixer's PyTorch
               port, SASRec+'s code): q = ln(x); q + attn(queries q, keys and values x), then
               h = ln(.); h + mlp(h) with a ReLU feed-forward: the residuals add the *normalised*
               input, and keys and values are not normalised
  Both have the same params (ln_attn, attn, ln_mlp, mlp), so every strategy and checkpoint path
  applies to either. `attention_dropout` (ATTENTION_DROPOUT) places the attention sublayer's
  dropout; `kernel_init_std` > 0 starts the feed-forward's and the attention output's kernels at
  N(0, std^2) (the reference code's nn.Linear / Conv1d init); query / key / value stay Xavier
  uniform per projection (torch's MultiheadAttention draws its stacked [3 embed, embed]
  in-projection at Xavier uniform, a variance 1/(2 embed) where this has 1/embed)."""

  num_heads: int
  mlp_dim: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  head_dim: int = 0
  block: str = "pre_ln"
  attention_dropout: str = "output"
  kernel_init_std: float = 0.0

  @nn.compact
  def __call__(self, x, mask, deterministic, last_only=False):
    """last_only: only the last position's output [batch, 1, embed] (it still attends to all)."""
    reference = self.block == "reference"
    h = common.layer_norm("ln_attn", self.dtype, self.param_dtype)(x)
    kv = x if reference else h
    on_weights = self.attention_dropout in ("weights", "both")
    attn = Attention(self.num_heads, self.dtype, self.param_dtype, self.head_dim,
                     dropout=self.dropout if on_weights else 0.0, out_init_std=self.kernel_init_std, name="attn")
    if last_only:
      a = attn(h[:, -1:], mask[:, :, -1:], kv=kv, deterministic=deterministic)
      x, h = x[:, -1:], h[:, -1:]
    else:
      a = attn(h, mask, kv=kv, deterministic=deterministic)
    if self.attention_dropout != "weights":
      a = nn.Dropout(self.dropout)(a, deterministic=deterministic)
    x = (h if reference else x) + a
    h = common.layer_norm("ln_mlp", self.dtype, self.param_dtype)(x)
    m = MLP(self.mlp_dim, self.dropout, self.dtype, self.param_dtype, "relu" if reference else "gelu",
            self.kernel_init_std, name="mlp")(h, deterministic)
    return (h if reference else x) + nn.Dropout(self.dropout)(m, deterministic=deterministic)


class TransformerEncoder(common.Encoder):
  """The body of SASRec and BERT4Rec; subclasses set `causal` and `uses_mask_token`."""

  num_layers: int = 2
  num_heads: int = 1
  mlp_dim: int = 256
  head_dim: int = 0  # per-head size; 0 = embed_dim // num_heads (a head-pruned model keeps its size)
  block: str = "pre_ln"  # BLOCKS: pre_ln | reference (SASRec's reference code; Block)
  positions: str = "right"  # POSITIONS: right | left
  attention_dropout: str = "output"  # ATTENTION_DROPOUT: output | weights | both
  kernel_init_std: float = 0.0  # > 0: the feed-forward and attention-output kernels at N(0, std^2)

  causal = True
  uses_mask_token = False
  fitted = False
  # padded slots are zeroed and never attended to, so inputs without some of their left padding
  # ([batch, L], L <= max_len; positions "right": rows max_len - L .. max_len - 1; "left": counted
  # from each window's oldest item either way) give the same states
  trims_left_padding = True
  # config.model.<name>: this encoder's own fields (the common ones live in config.model)
  config_defaults = {"num_layers": 2, "num_heads": 2, "mlp_dim": 256, "head_dim": 0, "block": "pre_ln",
                     "positions": "right", "attention_dropout": "output", "kernel_init_std": 0.0}

  @classmethod
  def from_config(cls, common_fields: dict, own, **shape):
    name = cls.__name__.lower()
    block = check_choice(name, "block", own.get("block", "pre_ln"), BLOCKS)
    positions = check_choice(name, "positions", own.get("positions", "right"), POSITIONS)
    attention_dropout = check_choice(name, "attention_dropout", own.get("attention_dropout", "output"),
                                     ATTENTION_DROPOUT)
    return cls(**shape, **common_fields, num_layers=own.num_layers, num_heads=own.num_heads, mlp_dim=own.mlp_dim,
               head_dim=own.get("head_dim", 0), block=block, positions=positions,
               attention_dropout=attention_dropout, kernel_init_std=check_std(name, own.get("kernel_init_std", 0.0)))

  @property
  def mask_token_id(self) -> int:
    return self.num_items + 1

  def roles(self) -> base.Roles:
    blocks = tuple(f"block_{i}" for i in range(self.num_layers))
    return base.Roles(
        **self.item_roles(),
        output_table=None if self.tie_embeddings else "output_embed/embedding",
        positions="pos_embed/embedding", positions_from="start" if self.positions == "left" else "end",
        blocks=blocks, final_norm="final_ln",
        sublayers=tuple(f"{b}/{s}" for b in blocks for s in ("attn", "mlp")),
        projections=tuple(f"{b}/attn/{p}" for b in blocks for p in ("query", "key", "value", "out"))
        + tuple(f"{b}/mlp/{p}" for b in blocks for p in ("wi", "wo")),
        attention=tuple(f"{b}/attn" for b in blocks),
        norms=tuple(f"{b}/{n}" for b in blocks for n in ("ln_attn", "ln_mlp")) + ("final_ln",))

  def setup(self):
    self.item_tables(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)
    self.pos_embed = nn.Embed(self.max_len, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                              embedding_init=common.with_axes(nn.initializers.normal(0.02), (None, "embed")))
    block = nn.remat(Block, static_argnums=(3, 4)) if self.remat else Block
    self.blocks = [block(self.num_heads, self.mlp_dim, self.dropout, self.dtype, self.param_dtype, self.head_dim,
                         self.block, self.attention_dropout, self.kernel_init_std, name=f"block_{i}")
                   for i in range(self.num_layers)]
    self.final_ln = common.layer_norm("final_ln", self.dtype, self.param_dtype)
    self.embed_dropout = nn.Dropout(self.dropout)

  def last_states(self, inputs):
    """The final state of every sequence [batch, embed] for scoring: the last block computes only
    the last position (its keys and values still cover every position), the same result as
    encode(inputs)[:, -1] for a fraction of the last block's work."""
    return self.encode(inputs, deterministic=True, last_only=True)[:, -1]

  def encode(self, inputs, deterministic: bool = True, last_only: bool = False):
    """inputs [batch, len] -> hidden states [batch, len, embed] (compute dtype); last_only: the
    last block computes only the last position ([batch, 1, embed])."""
    base.check_inputs(inputs, self.max_len, shorter_ok=True)
    length = inputs.shape[-1]  # right-aligned inputs: with positions "right", the last `length` rows
    valid = inputs > 0
    x = self.embed_items(inputs) * jnp.asarray(self.embed_dim ** 0.5, self.dtype)
    if self.positions == "left":  # slots counted from the window's oldest item (padding before it
      # reads row 0 and is zeroed; a blank inside the window, e.g. a masked item, keeps its slot)
      first = jnp.argmax(valid, axis=-1)[:, None]
      x = x + self.pos_embed(jnp.maximum(jnp.arange(length)[None] - first, 0))
    else:
      x = x + self.pos_embed(jnp.arange(self.max_len - length, self.max_len))[None]
    x = self.embed_dropout(x, deterministic=deterministic)
    x = x * valid[..., None].astype(x.dtype)
    mask = valid[:, None, None, :]
    if self.causal:
      mask = mask & jnp.tril(jnp.ones((length, length), bool))[None, None]
    # a fully padded query row attends to itself so softmax stays finite
    mask = mask | jnp.eye(length, dtype=bool)[None, None]
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    for i, blk in enumerate(self.blocks):
      x = blk(x, mask, deterministic, last_only and i == len(self.blocks) - 1)
    return self.final_ln(x)

  def scoring_inputs(self, inputs):
    if self.causal:
      return inputs
    # bidirectional: the next item is the masked position appended at the end
    return jnp.concatenate([inputs[:, 1:], jnp.full_like(inputs[:, :1], self.mask_token_id)], axis=1)
