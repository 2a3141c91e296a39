"""Multi-domain joint training (registry kind "multi_domain"): shared_bottom (per-domain heads) and
STAR (per-domain weights on every projection and norm)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xrec.models import common
from xrec.models.common import with_axes
from xrec.transfer.insert.forwarding import Forwarding


MULTI_DOMAIN_KINDS = ("shared_bottom", "star")


class DomainHead(nn.Module):
  """A domain's own part on top of the shared encoder: h + W_d h (W_d zero at init) and an output
  bias offset [vocab] (zero at init), so at step 0 every domain sees the shared model."""

  vocab_size: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, hidden):
    transform = nn.Dense(hidden.shape[-1], use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                         name="transform", kernel_init=with_axes(nn.initializers.zeros, ("embed", None)))
    bias = self.param("output_bias", with_axes(nn.initializers.zeros, ("vocab",)), (self.vocab_size,),
                      self.param_dtype)
    return hidden + transform(hidden), bias


class StarDeltas(nn.Module):
  """STAR (Sheng et al., 2021) for one domain: every dense projection's kernel W becomes
  W * (1 + V) and every LayerNorm's output gains a per-domain scale and shift (partitioned
  normalisation); V, the scale and the shift start at zero."""

  projections: tuple[tuple[str, tuple[int, ...]], ...]  # (module path, kernel shape)
  norms: tuple[tuple[str, int], ...]  # (module path, width)
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self):
    out = {}
    for path, shape in self.projections:
      out[path] = self.param(f"{path.replace('/', '.')}.kernel", nn.initializers.zeros, shape, self.param_dtype)
    for path, width in self.norms:
      out[path] = (self.param(f"{path.replace('/', '.')}.scale", nn.initializers.zeros, (width,), self.param_dtype),
                   self.param(f"{path.replace('/', '.')}.shift", nn.initializers.zeros, (width,), self.param_dtype))
    return out


class AuxiliaryTower(nn.Module):
  """STAR's auxiliary network, for item scoring: a domain-indicator embedding [domains, embed]
  through an MLP whose output layer starts at zero gives a per-domain vector added to the hidden
  states, i.e. a domain-dependent term h_d . e_v in every item's score."""

  num_domains: int
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, index: int):
    indicator = self.param("indicator", with_axes(nn.initializers.normal(1.0), (None, "embed")),
                           (self.num_domains, self.embed_dim), self.param_dtype)[index]
    h = nn.relu(nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="hidden",
                         kernel_init=with_axes(nn.initializers.lecun_normal(), ("embed", None)))(indicator))
    return nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="out",
                    kernel_init=with_axes(nn.initializers.zeros, (None, "embed")))(h)


class MultiDomain(Forwarding, nn.Module):
  """One model for several domains (multi-domain joint training): the shared encoder (its params
  keep their paths, so a pretrained one loads) plus, per domain, `domains/<d>/head` (DomainHead)
  and for kind "star" `domains/<d>/star` (StarDeltas on the encoder's projections and norms) and
  the auxiliary domain-indicator tower `domains/aux_tower` (AuxiliaryTower).
  __call__ / score_last / encode take `domain` (one of `domains`, default the first)."""

  encoder: nn.Module
  kind: str
  domains: tuple[str, ...]
  shapes: tuple = ()  # star: ((projection path, kernel shape), ...)
  widths: tuple = ()  # star: ((norm path, width), ...)

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.parts = _DomainParts(self.domains, self.kind, self.encoder.vocab_size, self.shapes, self.widths,
                              self.encoder.embed_dim, self.encoder.dtype, self.encoder.param_dtype, name="domains")

  def _check(self, domain):
    if domain not in self.domains:
      raise ValueError(f"Unknown domain {domain!r} of this multi-domain model; valid: {list(self.domains)}")

  def _shared_encode(self, inputs, deterministic, domain):
    if self.kind != "star":
      return self.encoder.encode(inputs, deterministic)
    deltas = self.parts.star(domain)
    by_path = {tuple(p.split("/")): p for p in deltas}

    def intercept(next_fun, args, kwargs, context):
      path = tuple(context.module.path)
      if context.method_name != "__call__" or path not in by_path:
        return next_fun(*args, **kwargs)
      y = next_fun(*args, **kwargs)
      delta = deltas[by_path[path]]
      if isinstance(delta, tuple):  # a LayerNorm: y = x_hat * scale + bias -> per-domain scale / shift
        bias = nn.unbox(context.module.get_variable("params", "bias"))
        scale_d, shift_d = (d.astype(y.dtype) for d in delta)
        return y + (y - bias.astype(y.dtype)) * scale_d + shift_d
      x = args[0]
      kernel = nn.unbox(context.module.get_variable("params", "kernel"))
      axes = getattr(context.module, "axis", -1)
      axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
      contract = tuple(a % x.ndim for a in axes)
      extra = jax.lax.dot_general(x, (kernel * delta).astype(x.dtype),
                                  ((contract, tuple(range(len(contract)))), ((), ())))
      return y + extra.astype(y.dtype)

    with nn.intercept_methods(intercept):
      return self.encoder.encode(inputs, deterministic)

  def _hidden(self, inputs, deterministic, domain):
    """(hidden states of `domain`, its output-bias offset)."""
    hidden, bias_d = self.parts.head(domain, self._shared_encode(inputs, deterministic, domain))
    if self.kind == "star":
      hidden = hidden + self.parts.aux(domain).astype(hidden.dtype)
    return hidden, bias_d

  def encode(self, inputs, deterministic: bool = True, domain: str | None = None):
    domain = domain or self.domains[0]
    self._check(domain)
    return self._hidden(inputs, deterministic, domain)[0]

  def __call__(self, inputs, deterministic: bool = True, domain: str | None = None):
    domain = domain or self.domains[0]
    self._check(domain)
    if self.is_initializing():  # every domain's parts get their params
      for d in self.domains:
        self.parts.head(d, jnp.zeros((1, self.encoder.embed_dim), self.encoder.dtype))
        if self.kind == "star":
          self.parts.star(d)
    hidden, bias_d = self._hidden(inputs, deterministic, domain)
    table, bias = self.encoder.output_table()
    return hidden, table, bias + bias_d

  def score_last(self, inputs, domain: str | None = None):
    domain = domain or self.domains[0]
    hidden, table, bias = self(self.encoder.scoring_inputs(inputs), True, domain)
    return common.score_items(hidden[:, -1], table, bias)


class _DomainParts(nn.Module):
  domains: tuple[str, ...]
  kind: str
  vocab_size: int
  shapes: tuple
  widths: tuple
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.heads = {d: DomainHead(self.vocab_size, self.dtype, self.param_dtype, name=f"{d}_head") for d in self.domains}
    if self.kind == "star":
      self.stars = {d: StarDeltas(self.shapes, self.widths, self.param_dtype, name=f"{d}_star") for d in self.domains}
      embed = dict(self.widths)[self.widths[0][0]] if self.widths else 0
      self.aux_tower = AuxiliaryTower(len(self.domains), embed, self.dtype, self.param_dtype)

  def head(self, domain, hidden):
    return self.heads[domain](hidden)

  def aux(self, domain):
    return self.aux_tower(self.domains.index(domain))

  def star(self, domain):
    return self.stars[domain]()


def build_multi_domain(encoder, kind: str, domains: tuple[str, ...]):
  """The encoder as a multi-domain model (see MultiDomain); STAR needs dense projections."""
  if kind not in MULTI_DOMAIN_KINDS:
    raise ValueError(f"Unknown transfer.multi_domain.kind {kind!r}; valid: {list(MULTI_DOMAIN_KINDS)}")
  if len(domains) < 2:
    raise ValueError(f"multi-domain training needs at least two domains, got {list(domains)}")
  shapes, widths = (), ()
  if kind == "star":
    roles = encoder.roles()
    if not roles.projections:
      raise ValueError(f"transfer.multi_domain.kind='star' needs dense projections (a Transformer encoder); "
                       f"{type(encoder).__name__} has none: use kind='shared_bottom'")
    abstract = jax.eval_shape(lambda: encoder.init({"params": jax.random.key(0)},
                                                   jnp.ones((1, encoder.max_len), jnp.int32)))["params"]
    flat = common.flatten(nn.unbox(abstract))
    shapes = tuple((p, tuple(flat[f"{p}/kernel"].shape)) for p in roles.projections)
    widths = tuple((p, int(flat[f"{p}/scale"].shape[0])) for p in roles.norms)
  return MultiDomain(encoder, kind, tuple(domains), shapes, widths)


def build(encoder, options: dict):
  return build_multi_domain(encoder, options["kind"], tuple(options["domains"]))
