"""Heads beside an encoder (xrec/transfer/insert/__init__.py registry kind "heads"): a domain
discriminator (domain-adversarial transfer) and a projection into a teacher's width (distillation)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xrec.models.common import with_axes
from xrec.transfer.insert.forwarding import Forwarding


class DomainDiscriminator(nn.Module):
  """An MLP sequence representation [..., embed] -> domain logit [...] (source vs target)."""

  hidden: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden",
                         kernel_init=with_axes(nn.initializers.lecun_normal(), ("embed", None)),
                         bias_init=with_axes(nn.initializers.zeros, (None,)))(x))
    return nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(h)[..., 0]


class WithHeads(Forwarding, nn.Module):
  """`encoder` (its params keep their paths) plus heads outside the encoder under `heads/`:
  `heads/domain_discriminator/...` read by `discriminate(representation)` (domain-adversarial
  transfer) and `heads/projection/...` read by `project(hidden)` (distillation's hidden-state
  matching into the teacher's width). The encoder's contract is forwarded unchanged."""

  trims_left_padding = property(lambda self: getattr(self.encoder, "trims_left_padding", False))

  encoder: nn.Module
  discriminator_hidden: int = 0  # 0: no discriminator
  projection_dim: int = 0  # 0: no projection

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.heads = _Heads(self.discriminator_hidden, self.projection_dim, self.encoder.dtype,
                        self.encoder.param_dtype, name="heads")

  def encode(self, inputs, deterministic: bool = True):
    return self.encoder.encode(inputs, deterministic)

  def __call__(self, inputs, deterministic: bool = True):
    if self.is_initializing():  # the heads' params are created with the encoder's
      probe = jnp.zeros((1, self.encoder.embed_dim), self.encoder.dtype)
      if self.discriminator_hidden:
        self.heads.domain_discriminator(probe)
      if self.projection_dim:
        self.heads.projection(probe)
    return self.encoder(inputs, deterministic)

  def score_last(self, inputs):
    return self.encoder.score_last(inputs)

  def domain_features(self, inputs, deterministic: bool = True):
    """What the domain discriminator reads: the encoder's states."""
    return self.encoder.encode(inputs, deterministic)

  def discriminate(self, representation):
    """representation [..., embed] -> domain logits [...] (> 0: source)."""
    return self.heads.domain_discriminator(representation)

  def project(self, hidden):
    """hidden [..., embed] -> [..., projection_dim] (a learned linear map)."""
    return self.heads.projection(hidden)


class _Heads(nn.Module):
  hidden: int
  projection_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.hidden:
      self.domain_discriminator = DomainDiscriminator(self.hidden, self.dtype, self.param_dtype)
    if self.projection_dim:
      self.projection = nn.Dense(self.projection_dim, dtype=self.dtype, param_dtype=self.param_dtype,
                                 kernel_init=with_axes(nn.initializers.lecun_normal(), ("embed", None)))


def build(encoder, options: dict):
  return WithHeads(encoder, int(options.get("discriminator_hidden", 0)), int(options.get("projection_dim", 0)))
