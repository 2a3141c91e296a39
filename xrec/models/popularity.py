"""Popularity baseline: every user gets the items ranked by training-interaction count.

It meets the encoder contract (xrec/models/base.py) as the degenerate encoder whose hidden
states and item table are zero, so its scores are its output bias: the items' counts. The counts
are fitted by counting (`fit_params`, `fitted = True`), not by gradients; the trainer evaluates
them like any encoder's params.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from xrec.models import base, common


class Popularity(nn.Module):
  vocab_size: int
  max_len: int
  num_items: int

  causal = True
  uses_mask_token = False
  fitted = True
  config_defaults = {}

  @classmethod
  def from_config(cls, common_fields: dict, own, **shape):
    del common_fields, own  # counts need no hyperparameters
    return cls(**shape)

  def roles(self) -> base.Roles:
    return base.Roles(item_table=None, output_bias="output_bias")

  def setup(self):
    self.output_bias = common.output_bias_param(self, self.vocab_size, jnp.float32)

  def encode(self, inputs, deterministic: bool = True):
    del deterministic
    return jnp.zeros(inputs.shape + (1,), jnp.float32)

  def output_table(self):
    return jnp.zeros((self.vocab_size, 1), jnp.float32), self.output_bias

  def __call__(self, inputs, deterministic: bool = True):
    table, bias = self.output_table()
    return self.encode(inputs, deterministic), table, bias

  def score_last(self, inputs):
    table, bias = self.output_table()
    return common.score_items(self.encode(inputs)[:, -1], table, bias)

  def fit_params(self, item_counts) -> dict:
    """The fitted encoders' part of the contract: item_counts [num_items + 1] over the training
    users' sequences -> the param tree."""
    counts = jnp.asarray(item_counts, jnp.float32)
    return {"output_bias": jnp.zeros((self.vocab_size,), jnp.float32).at[: len(counts)].set(counts)}
