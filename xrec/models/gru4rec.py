"""GRU4Rec (Hidasi et al., 2016; the sequence-to-sequence form of Hidasi & Karatzoglou, 2018).

Item embeddings -> `num_layers` GRU layers -> LayerNorm; the hidden state after item t predicts
item t + 1 (causal by construction), scored against the item table. Inputs are right-aligned:
the recurrent state stays at zero over the left padding, so a sequence's states do not depend
on how much padding precedes it.

Param tree:
  item_embed/embedding [vocab, embed], output_embed/embedding (untied only), output_bias [vocab] (model.output_bias)
  layer_{i}/cell/{ir,iz,in}/{kernel,bias}, layer_{i}/cell/{hr,hz,hn}/kernel   (flax GRUCell)
  final_ln/{scale,bias}
Roles: blocks are the layers; adapters and patches attach to each layer (LoRA and prompts do not
apply: there are no attention projections).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xrec.models import base, common

Dtype = jnp.dtype


def _masked_step(cell, carry, xs):
  """One GRU step that keeps the previous state where the input is padding."""
  x_t, valid_t = xs
  new, _ = cell(carry, x_t)
  carry = jnp.where(valid_t[:, None], new, carry)
  return carry, carry


class GRULayer(nn.Module):
  """[batch, len, embed] -> [batch, len, embed], state carried left to right over valid steps."""

  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, valid):
    cell = nn.GRUCell(self.features, dtype=self.dtype, param_dtype=self.param_dtype, name="cell")
    scan = nn.scan(_masked_step, variable_broadcast="params", split_rngs={"params": False},
                   in_axes=1, out_axes=1)
    carry = jnp.zeros((x.shape[0], self.features), x.dtype)
    _, states = scan(cell, carry, (x, valid))
    return states


class GRU4Rec(common.Encoder):
  """Inputs: item ids [batch, max_len], right-aligned, 0 = padding."""

  num_layers: int = 1

  causal = True
  uses_mask_token = False
  fitted = False
  config_defaults = {"num_layers": 1}

  @classmethod
  def from_config(cls, common_fields: dict, own, **shape):
    return cls(**shape, **common_fields, num_layers=own.num_layers)

  def roles(self) -> base.Roles:
    layers = tuple(f"layer_{i}" for i in range(self.num_layers))
    return base.Roles(**self.item_roles(),
                      output_table=None if self.tie_embeddings else "output_embed/embedding",
                      blocks=layers, final_norm="final_ln", sublayers=layers)

  def setup(self):
    self.item_tables(self.vocab_size, self.embed_dim, self.dtype, self.param_dtype)
    layer = nn.remat(GRULayer) if self.remat else GRULayer
    self.layers = [layer(self.embed_dim, self.dtype, self.param_dtype, name=f"layer_{i}")
                   for i in range(self.num_layers)]
    self.final_ln = common.layer_norm("final_ln", self.dtype, self.param_dtype)
    self.drop = nn.Dropout(self.dropout)

  def encode(self, inputs, deterministic: bool = True):
    """inputs [batch, len] -> hidden states [batch, len, embed]."""
    base.check_inputs(inputs, self.max_len)
    valid = inputs > 0
    x = self.drop(self.embed_items(inputs), deterministic=deterministic)
    for layer in self.layers:
      x = self.drop(layer(x, valid), deterministic=deterministic)
    return self.final_ln(x) * valid[..., None].astype(x.dtype)
