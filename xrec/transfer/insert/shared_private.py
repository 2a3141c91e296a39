"""Shared-private domain adaptation (registry kind "shared_private")."""

from __future__ import annotations


import flax.linen as nn
import jax.numpy as jnp

from xrec.models import common
from xrec.models.common import with_axes
from xrec.transfer.insert.forwarding import Forwarding
from xrec.transfer.insert.heads import _Heads


class SharedPrivate(Forwarding, nn.Module):
  """Shared-private domain adaptation (after Bousmalis et al., 2016, domain separation networks):
  the loaded `encoder` is shared (its params keep their paths); each domain adds a private
  encoder of the same architecture (`private/<d>_encoder/...`, fresh) whose states join the
  shared ones through a zero-initialised projection (`private/<d>_gate`), so at step 0 every
  domain computes the pretrained function. The domain discriminator (`heads/...`) reads the
  shared states only (`domain_features`); `shared_private` gives both for the orthogonality term.
  __call__ / score_last / encode take `domain` (one of `domains`, default the first)."""

  encoder: nn.Module
  domains: tuple[str, ...]
  discriminator_hidden: int

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.private = _PrivateParts(self.encoder, self.domains, name="private")
    self.heads = _Heads(self.discriminator_hidden, 0, self.encoder.dtype, self.encoder.param_dtype, name="heads")

  def _check(self, domain):
    domain = domain or self.domains[0]
    if domain not in self.domains:
      raise ValueError(f"Unknown domain {domain!r} of this shared-private model; valid: {list(self.domains)}")
    return domain

  def shared_private(self, inputs, deterministic: bool = True, domain: str | None = None):
    """(shared states, the domain's private states) [batch, len, embed], before they are joined."""
    domain = self._check(domain)
    return self.encoder.encode(inputs, deterministic), self.private.encode(domain, inputs, deterministic)

  def encode(self, inputs, deterministic: bool = True, domain: str | None = None):
    domain = self._check(domain)
    if self.is_initializing():  # every domain's private encoder and gate get their params
      for d in self.domains:
        self.private.join(d, self.private.encode(d, inputs, deterministic))
      self.heads.domain_discriminator(jnp.zeros((1, self.encoder.embed_dim), self.encoder.dtype))
    shared, private = self.shared_private(inputs, deterministic, domain)
    return shared + self.private.join(domain, private).astype(shared.dtype)

  def domain_features(self, inputs, deterministic: bool = True):
    """What the domain discriminator reads: the shared encoder's states."""
    return self.encoder.encode(inputs, deterministic)

  def discriminate(self, representation):
    return self.heads.domain_discriminator(representation)

  def __call__(self, inputs, deterministic: bool = True, domain: str | None = None):
    hidden = self.encode(inputs, deterministic, domain)
    table, bias = self.encoder.output_table()
    return hidden, table, bias

  def score_last(self, inputs, domain: str | None = None):
    hidden, table, bias = self(self.encoder.scoring_inputs(inputs), True, domain)
    return common.score_items(hidden[:, -1], table, bias)


class _PrivateParts(nn.Module):
  encoder: nn.Module  # the architecture the private encoders copy
  domains: tuple[str, ...]

  def setup(self):
    self.encoders = {d: self.encoder.clone(parent=self, name=f"{d}_encoder") for d in self.domains}
    self.gates = {d: nn.Dense(self.encoder.embed_dim, use_bias=False, dtype=self.encoder.dtype,
                              param_dtype=self.encoder.param_dtype, name=f"{d}_gate",
                              kernel_init=with_axes(nn.initializers.zeros, ("embed", None)))
                  for d in self.domains}

  def encode(self, domain, inputs, deterministic):
    return self.encoders[domain].encode(inputs, deterministic)

  def join(self, domain, private):
    return self.gates[domain](private)


def build(encoder, options: dict):
  return SharedPrivate(encoder, tuple(options["domains"]), int(options["discriminator_hidden"]))
