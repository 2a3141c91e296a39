"""Parameter-efficient modules inserted into any encoder from outside (the model files know none).

    module = insert.wrap(encoder, kind, options)   # kind: adapter | lora | prompt | patch

`Inserted` is a linen module that shares the encoder's scope (so the encoder's params keep their
own paths, and a pretrained tree loads unchanged) and holds the new modules under `inserted/`:

  adapter  inserted/<sublayer path>/adapter/{down,up}/{kernel,bias}
           a bottleneck up(gelu(down(.))) added to the output y of each sublayer the encoder's
           roles name (`Roles.sublayers`): y + adapter(y) (serial, Houlsby) or y + adapter(x)
           (parallel, He et al.: reads the sublayer's input x)
  lora     inserted/<projection path>/lora/{a,b}/kernel
           W x + B (A x) around the dense projections in `Roles.projections` whose name is in
           lora.targets (query, key, value, out, wi, wo)
  prompt   inserted/<attention path>/prompt/{tokens,gate}
           `num_prompts` learned prefix tokens seen through the attention module's own key and
           value projections, with their own softmax over the queries, mixed into the attention
           output per head by tanh(gate) (zero-init gating as in LLaMA-Adapter)
  patch    inserted/<block path>/patch/{down,up}/{kernel,bias}
           a PeterRec-style bottleneck beside every block: block(x) + patch(x)

The modules run through flax method interception (`nn.intercept_methods`): calls of the named
sublayers are wrapped while the encoder runs. Each joins the residual stream through a zero
initialised part (`up`, `b`, the gate), so at step 0 the wrapped encoder computes exactly the
pretrained function (tested for every kind on every encoder it applies to). A kind whose points
the encoder's roles do not provide (prompts on a GRU) is an error naming the kinds that apply.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xrec.models import base
from xrec.models import common
from xrec.models.common import with_axes

KINDS = ("adapter", "lora", "prompt", "patch")
ADAPTER_KINDS = ("serial", "parallel")
LORA_TARGETS = ("query", "key", "value", "out", "wi", "wo")


def points(roles: base.Roles, kind: str, options: dict) -> tuple[str, ...]:
  """The module paths of `roles` where modules of `kind` go (empty: the kind does not apply)."""
  if kind == "adapter":
    return roles.sublayers
  if kind == "lora":
    targets = set(options.get("targets", ()))
    return tuple(p for p in roles.projections if p.rsplit("/", 1)[-1] in targets)
  if kind == "prompt":
    return roles.attention
  if kind == "patch":
    return roles.blocks
  raise ValueError(f"Unknown inserted module kind {kind!r}; valid: {list(KINDS)}")


def applicable_kinds(roles: base.Roles) -> list[str]:
  options = {"targets": LORA_TARGETS}
  return [k for k in KINDS if points(roles, k, options)]


class Adapter(nn.Module):
  """Bottleneck x [..., embed] -> up(gelu(down(x))) [..., embed]; `up` is zero so it starts at 0."""

  bottleneck: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(self.bottleneck, dtype=self.dtype, param_dtype=self.param_dtype, name="down",
                 kernel_init=with_axes(nn.initializers.lecun_normal(), ("embed", None)),
                 bias_init=with_axes(nn.initializers.zeros, (None,)))(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, param_dtype=self.param_dtype, name="up",
                    kernel_init=with_axes(nn.initializers.zeros, (None, "embed")),
                    bias_init=with_axes(nn.initializers.zeros, ("embed",)))(nn.gelu(h))


class LoRA(nn.Module):
  """Low-rank update B (A x) of a projection x [..., *in] -> [..., *features]: `a` [*in, rank]
  random, `b` [rank, *features] zero, so the update is exactly zero until `b` trains."""

  rank: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, in_axes: tuple[int, ...], features: tuple[int, ...], names: tuple):
    """names: the logical axis names of the projection's kernel [*in, *features] (sharding)."""
    in_names, out_names = names[:len(in_axes)], names[len(in_axes):]
    h = nn.DenseGeneral(self.rank, axis=in_axes, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="a", kernel_init=with_axes(nn.initializers.lecun_normal(), (*in_names, None)))(x)
    return nn.DenseGeneral(features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype, name="b",
                           kernel_init=with_axes(nn.initializers.zeros, (None, *out_names)))(h)


class Prompt(nn.Module):
  """Gated attention of every query to `num_prompts` learned tokens [prompts, embed] projected
  by the attention module's own key / value projections (`key_fn`, `value_fn`)."""

  num_prompts: int
  num_heads: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, q, key_fn, value_fn, embed: int):
    """q [batch, len, heads, head_dim] -> [batch, len, heads, head_dim] (zero at init)."""
    tokens = self.param("tokens", with_axes(nn.initializers.normal(1.0), (None, "embed")),
                        (self.num_prompts, embed), self.param_dtype)
    gate = self.param("gate", with_axes(nn.initializers.zeros, ("heads",)), (self.num_heads,), self.param_dtype)
    tokens = tokens.astype(self.dtype)
    k, v = key_fn(tokens), value_fn(tokens)  # [prompts, heads, head_dim]
    scale = jnp.asarray(q.shape[-1] ** -0.5, q.dtype)
    weights = jax.nn.softmax(jnp.einsum("blhd,phd->bhlp", q * scale, k).astype(jnp.float32), -1)
    mixed = jnp.einsum("bhlp,phd->blhd", weights.astype(v.dtype), v)
    return jnp.tanh(gate).astype(mixed.dtype)[:, None] * mixed


def _tree(paths: tuple[str, ...]) -> tuple:
  """('a/b', 'a/c') -> (('a', (('b', None), ('c', None))),): nested (name, children) pairs."""
  root: dict = {}
  for path in paths:
    node = root
    for part in path.split("/"):
      node = node.setdefault(part, {})

  def freeze(node):
    return tuple((name, freeze(child) if child else None) for name, child in node.items())
  return freeze(root)


class _Group(nn.Module):
  """Nested containers mirroring the encoder's module paths; a leaf holds one inserted module."""

  tree: tuple
  kind: str
  options: tuple  # sorted (name, value) pairs
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    members = {}
    for name, child in self.tree:
      if child is None:
        members[name] = _Group((), self.kind, self.options, self.dtype, self.param_dtype, name=name)
      else:
        members[name] = _Group(child, self.kind, self.options, self.dtype, self.param_dtype, name=name)
    self.members = members
    if not self.tree:  # a leaf: the point's own module
      opts = dict(self.options)
      if self.kind == "adapter":
        self.module = Adapter(opts["dim"], self.dtype, self.param_dtype, name="adapter")
      elif self.kind == "patch":
        self.module = Adapter(opts["dim"], self.dtype, self.param_dtype, name="patch")
      elif self.kind == "lora":
        self.module = LoRA(opts["rank"], self.dtype, self.param_dtype, name="lora")
      else:
        self.module = Prompt(opts["num_prompts"], opts["num_heads"], self.dtype, self.param_dtype, name="prompt")

  def leaf(self, parts: tuple[str, ...]):
    if not parts:
      return self.module
    return self.members[parts[0]].leaf(parts[1:])


class Forwarding:
  """The contract's attributes of a wrapper's `encoder`, forwarded (xrec/models/base.py)."""

  causal = property(lambda self: self.encoder.causal)
  uses_mask_token = property(lambda self: self.encoder.uses_mask_token)
  fitted = property(lambda self: self.encoder.fitted)
  vocab_size = property(lambda self: self.encoder.vocab_size)
  max_len = property(lambda self: self.encoder.max_len)
  num_items = property(lambda self: self.encoder.num_items)

  def roles(self) -> base.Roles:
    return self.encoder.roles()

  def output_table(self):
    return self.encoder.output_table()


class Intercepting(Forwarding):
  """The contract's methods of `encoder`, run under the wrapper's `_interceptor()` (flax method
  interception): a wrapper that changes sublayers of the encoder from outside defines only that."""

  def _run(self, method, *args):
    with nn.intercept_methods(self._interceptor()):
      return getattr(self.encoder, method)(*args)

  def encode(self, inputs, deterministic: bool = True):
    return self._run("encode", inputs, deterministic)

  def __call__(self, inputs, deterministic: bool = True):
    return self._run("__call__", inputs, deterministic)

  def score_last(self, inputs):
    return self._run("score_last", inputs)


class Inserted(Intercepting, nn.Module):
  """`encoder` with modules of one `kind` at `points` (see the module docstring)."""

  # adapters, LoRA and patches act per position and prompts are learned tokens every query
  # attends to: none reads the left padding, so the encoder's answer holds for the wrapper
  trims_left_padding = property(lambda self: getattr(self.encoder, "trims_left_padding", False))

  encoder: nn.Module
  kind: str
  points: tuple[str, ...]
  options: tuple  # sorted (name, value) pairs of the kind's options

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.inserted = _Group(_tree(self.points), self.kind, self.options, self.encoder.dtype,
                           self.encoder.param_dtype, name="inserted")

  def _interceptor(self):
    wanted = {p: tuple(p.split("/")) for p in self.points}
    by_path = {v: k for k, v in wanted.items()}
    opts = dict(self.options)
    pending = {}  # prompt: per attention module, what its query/key/value calls produced

    def intercept(next_fun, args, kwargs, context):
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      path = tuple(context.module.path)
      if self.kind == "prompt" and path[:-1] in by_path and path[-1] in ("query", "key", "value", "out"):
        return self._prompt(by_path[path[:-1]], path[-1], next_fun, args, kwargs, pending, context.module)
      if path not in by_path or self.kind == "prompt":  # prompts act on the projections (above)
        return next_fun(*args, **kwargs)
      module = self.inserted.leaf(path)
      if self.kind == "lora":
        x = args[0]
        y = next_fun(*args, **kwargs)
        axes = getattr(context.module, "axis", -1)
        axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
        features = tuple(y.shape[x.ndim - len(axes):])
        return y + module(x, axes, features, _kernel_names(context.module, len(axes) + len(features))).astype(y.dtype)
      y = next_fun(*args, **kwargs)
      if self.kind == "patch":
        return y + module(args[0]).astype(y.dtype)
      reads = y if opts["kind"] == "serial" else args[0]  # adapter
      return y + module(reads).astype(y.dtype)

    return intercept

  def _prompt(self, point, name, next_fun, args, kwargs, pending, module):
    state = pending.setdefault(point, {})
    if name == "query":
      state["q"] = next_fun(*args, **kwargs)
      return state["q"]
    if name in ("key", "value"):
      state.setdefault(name, module)  # the projection itself, applied to the prompt tokens below
      state.setdefault("embed", args[0].shape[-1])  # the model width the projection reads
      return next_fun(*args, **kwargs)
    out_in = args[0]  # [batch, len, heads, head_dim]: the attention output before `out`
    prompt = self.inserted.leaf(tuple(point.split("/")))
    mixed = prompt(state["q"], state["key"], state["value"], state["embed"])
    pending.pop(point)
    return next_fun(out_in + mixed.astype(out_in.dtype), *args[1:], **kwargs)



def _kernel_names(module, ndim: int) -> tuple:
  """Logical axis names of a projection's kernel (known while params are created; None after)."""
  kernel = module.get_variable("params", "kernel")
  names = getattr(kernel, "names", None)
  return tuple(names) if names is not None and len(names) == ndim else (None,) * ndim


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


CROSS_USER_MODES = ("merged", "prefix")


class CrossUser(Intercepting, nn.Module):
  """An encoder that also reads each user's source-domain history (xrec/data/cross_user.py makes
  the inputs): input ids >= `offset` (the encoder's vocab size) are not target items and are
  embedded here, in place of the item table's lookup, before the encoder runs:

    merged  id offset + s is source item s: `cross/source_embed` (a copy of the pretrained item
            table, rows in source ids) plus a domain embedding (`cross/domain_embed`, row 1; target
            items get row 0), as in C2DSR's merged sequences
    prefix  id offset + u + 1 is target user u's source-history token: `cross/prefix_proj` of the
            frozen representation `cross/user_table[u + 1]` a source encoder computed (the trainer
            fills the table)

  The encoder's params keep their paths, so a pretrained tree loads unchanged; causal encoders
  with an item table only (the encoder sees ids, not vectors)."""

  encoder: nn.Module
  mode: str
  offset: int
  rows: int
  source_dim: int

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.cross = _CrossParts(self.mode, self.rows, self.source_dim, self.encoder.embed_dim, self.encoder.dtype,
                             self.encoder.param_dtype, name="cross")

  def _interceptor(self):
    table = tuple(self.encoder.roles().item_table.split("/")[:-1])

    def intercept(next_fun, args, kwargs, context):
      if context.method_name != "__call__" or tuple(context.module.path) != table:
        return next_fun(*args, **kwargs)
      ids = args[0]
      own = ids < self.offset
      y = next_fun(jnp.where(own, ids, 0), *args[1:], **kwargs)
      other, own_shift = self.cross(jnp.clip(ids - self.offset, 0, self.rows - 1))
      y = y + jnp.where((ids > 0)[..., None], own_shift.astype(y.dtype), 0)
      return jnp.where(own[..., None], y, other.astype(y.dtype))
    return intercept


class _CrossParts(nn.Module):
  mode: str
  rows: int
  source_dim: int
  embed_dim: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, index):
    """index [...] (id - offset) -> (embeddings of the non-target ids [..., embed], the shift every
    target item gets [embed])."""
    if self.mode == "merged":
      other = common.item_embedding(self.rows, self.embed_dim, self.dtype, self.param_dtype, name="source_embed")(index)
      domain = self.param("domain_embed", with_axes(nn.initializers.zeros, (None, "embed")), (2, self.embed_dim),
                          self.param_dtype)
      return other + domain[1].astype(other.dtype), domain[0]
    users = self.param("user_table", with_axes(nn.initializers.zeros, (None, None)), (self.rows, self.source_dim),
                       self.param_dtype)
    other = nn.Dense(self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype, name="prefix_proj",
                     kernel_init=with_axes(nn.initializers.lecun_normal(), (None, "embed")))(users[index])
    return other, jnp.zeros((self.embed_dim,), self.dtype)


@dataclasses.dataclass(frozen=True)
class InsertSpec:
  kind: str
  options: tuple  # sorted (name, value) pairs


def wrap(encoder, spec: InsertSpec | None):
  """The encoder with `spec`'s modules inserted (the encoder itself when spec is None). Fails,
  naming the kinds that apply, when the encoder's roles offer no point for the kind."""
  if spec is None:
    return encoder
  if spec.kind in ("multi_domain", "shared_private", "cross_user") and getattr(encoder, "item_columns", ()):
    raise ValueError(f"transfer kind {spec.kind!r} reads the encoder's full-width hidden states and item "
                     "table: it does not apply to a model with narrowed item tables (model.item_columns)")
  if spec.kind == "multi_domain":
    options = dict(spec.options)
    return multi_domain(encoder, options["kind"], tuple(options["domains"]))
  if spec.kind == "cross_user":
    options = dict(spec.options)
    if not encoder.causal or not encoder.roles().item_table:
      raise ValueError(f"overlapping-user models need a causal encoder with an item table; "
                       f"{type(encoder).__name__} is not one")
    if int(options["rows"]) < 1 or (options["mode"] == "prefix" and int(options["source_dim"]) < 1):
      raise ValueError("transfer.strategy='cross_user' needs the source history's sizes (the trainer sets "
                       "transfer.cross_user.rows / source_dim from data.source_domain and train.init_from)")
    return CrossUser(encoder, options["mode"], int(encoder.vocab_size), int(options["rows"]),
                     int(options["source_dim"]))
  if spec.kind == "shared_private":
    options = dict(spec.options)
    return SharedPrivate(encoder, tuple(options["domains"]), int(options["discriminator_hidden"]))
  if spec.kind == "heads":
    options = dict(spec.options)
    return WithHeads(encoder, int(options.get("discriminator_hidden", 0)), int(options.get("projection_dim", 0)))
  if spec.kind not in KINDS:
    raise ValueError(f"Unknown inserted module kind {spec.kind!r}; valid: {list(KINDS)}")
  roles = encoder.roles()
  options = dict(spec.options)
  where = points(roles, spec.kind, options)
  if not where:
    name = type(encoder).__name__
    raise ValueError(f"{spec.kind} modules do not apply to {name}: it has no "
                     f"{ {'adapter': 'sublayers', 'lora': 'projections named in lora.targets', 'prompt': 'attention modules', 'patch': 'blocks'}[spec.kind] }; "
                     f"kinds that apply to {name}: {applicable_kinds(roles)}")
  if spec.kind == "prompt":
    heads = getattr(encoder, "num_heads", None)
    options["num_heads"] = heads
  return Inserted(encoder, spec.kind, where, tuple(sorted(options.items())))


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


def multi_domain(encoder, kind: str, domains: tuple[str, ...]):
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
