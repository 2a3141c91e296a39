"""NextItNet (Yuan et al., 2019): stacked dilated causal 1-D convolutions with residual blocks.

Item embeddings -> one residual block per entry of `dilations` -> LayerNorm. A block is
  x + conv_1(relu(ln_1(conv_0(relu(ln_0(x))))))
where conv_0 has dilation d and conv_1 dilation 2d (kernel `kernel_size`), both causal (left
padding only), so position t sees items <= t and predicts item t + 1. Padded positions are zero
at the input of every convolution and after every block, so a sequence's states do not depend
on how much padding precedes it.

Param tree:
  item_embed/embedding [vocab, embed], output_embed/embedding (untied only), output_bias [vocab] (model.output_bias)
  block_{i}/ln_{0,1}/{scale,bias}, block_{i}/conv_{0,1}/{kernel [k, embed, embed], bias}
  final_ln/{scale,bias}
Roles: blocks; adapters attach after each convolution, patches beside each block (PeterRec's
setting); LoRA and prompts do not apply.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xrec.models import base, common

Dtype = jnp.dtype


class ResidualBlock(nn.Module):
  kernel_size: int
  dilation: int
  dropout: float
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  def _conv(self, name, dilation, channels):
    return nn.Conv(channels, kernel_size=(self.kernel_size,), kernel_dilation=(dilation,),
                   padding=[((self.kernel_size - 1) * dilation, 0)], dtype=self.dtype,
                   param_dtype=self.param_dtype, name=name,
                   kernel_init=common.with_axes(nn.initializers.lecun_normal(), (None, "embed", "mlp")),
                   bias_init=common.with_axes(nn.initializers.zeros, ("mlp",)))

  @nn.compact
  def __call__(self, x, valid, deterministic):
    channels = x.shape[-1]
    keep = valid[..., None].astype(x.dtype)  # padding stays 0 into every convolution
    h = nn.relu(common.layer_norm("ln_0", self.dtype, self.param_dtype)(x)) * keep
    h = self._conv("conv_0", self.dilation, channels)(h)
    h = nn.relu(common.layer_norm("ln_1", self.dtype, self.param_dtype)(h)) * keep
    h = self._conv("conv_1", 2 * self.dilation, channels)(h)
    h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
    return (x + h) * valid[..., None].astype(x.dtype)


class NextItNet(common.Encoder):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding."""

  dilations: tuple[int, ...] = (1, 2, 4)
  kernel_size: int = 3

  causal = True
  uses_mask_token = False
  fitted = False
  config_defaults = {"dilations": (1, 2, 4), "kernel_size": 3}

  @classmethod
  def from_config(cls, common_fields: dict, own, **shape):
    return cls(**shape, **common_fields, dilations=tuple(int(d) for d in own.dilations), kernel_size=own.kernel_size)

  def roles(self) -> base.Roles:
    blocks = tuple(f"block_{i}" for i in range(len(self.dilations)))
    return base.Roles(**self.item_roles(),
                      output_table=None if self.tie_embeddings else "output_embed/embedding",
                      blocks=blocks, final_norm="final_ln",
                      sublayers=tuple(f"{b}/conv_{j}" for b in blocks for j in (0, 1)))

  def setup(self):
    if not self.dilations or any(int(d) < 1 for d in self.dilations) or self.kernel_size < 1:
      raise ValueError(f"nextitnet needs dilations >= 1 and kernel_size >= 1; got dilations="
                       f"{tuple(self.dilations)}, kernel_size={self.kernel_size}")
    self.item_tables(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)
    block = nn.remat(ResidualBlock, static_argnums=(3,)) if self.remat else ResidualBlock
    self.blocks = [block(self.kernel_size, int(d), self.dropout, self.dtype, self.param_dtype, name=f"block_{i}")
                   for i, d in enumerate(self.dilations)]
    self.final_ln = common.layer_norm("final_ln", self.dtype, self.param_dtype)

  def encode(self, inputs, deterministic: bool = True):
    base.check_inputs(inputs, self.max_len)
    valid = inputs > 0
    x = self.embed_items(inputs) * valid[..., None].astype(self.dtype)
    for blk in self.blocks:
      x = blk(x, valid, deterministic)
    return self.final_ln(x) * valid[..., None].astype(x.dtype)
