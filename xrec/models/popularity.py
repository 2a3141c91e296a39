"""Popularity baseline: every user gets the items ranked by training-interaction count."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class Popularity(nn.Module):
  """Param `item_counts` [vocab] is fitted by counting (see `fit_params`), not by gradients."""

  vocab_size: int

  @nn.compact
  def score_last(self, inputs):
    counts = self.param("item_counts", nn.with_logical_partitioning(nn.initializers.zeros, ("vocab",)),
                        (self.vocab_size,), jnp.float32)
    return jnp.broadcast_to(counts[None, :], (inputs.shape[0], self.vocab_size))


def fit_params(counts, vocab_size: int) -> dict:
  """counts: int [num_items + 1] from the training part of the sequences."""
  table = jnp.zeros((vocab_size,), jnp.float32).at[: len(counts)].set(jnp.asarray(counts, jnp.float32))
  return {"params": {"item_counts": table}}
