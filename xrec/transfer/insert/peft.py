"""Parameter-efficient modules inserted into any encoder from outside (the model files know none).

    module = insert.wrap(encoder, InsertSpec(kind, options))   # kind: a key of PEFT below

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

A kind is one `PeftKind` in `PEFT`: where its modules go (`points`), the module at one point
(`build`), how it joins the intercepted call (`apply`), and whether the wrapped encoder still
ignores left padding (`trims_left_padding`, declared per kind: nothing is inherited silently).
Adding a kind: its linen module and one `PeftKind` line here, a preset in
xrec/transfer/strategies.py, a test (docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from xrec.models import base
from xrec.models.common import with_axes
from xrec.transfer.insert.forwarding import Intercepting

ADAPTER_KINDS = ("serial", "parallel")
LORA_TARGETS = ("query", "key", "value", "out", "wi", "wo")


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



def _kernel_names(module, ndim: int) -> tuple:
  """Logical axis names of a projection's kernel (known while params are created; None after)."""
  kernel = module.get_variable("params", "kernel")
  names = getattr(kernel, "names", None)
  return tuple(names) if names is not None and len(names) == ndim else (None,) * ndim



# --- how each kind joins the call it intercepts: (wrapper, point, call) -> output -------------


@dataclasses.dataclass
class Call:
  """One intercepted call: the sublayer / projection (`module`, its path's last name `name`),
  `next_fun(*args, **kwargs)` computes its own output; `pending` is shared across the calls of
  one forward pass (prompts collect an attention module's query, key and value there)."""

  module: Any
  name: str
  next_fun: Callable
  args: tuple
  kwargs: dict
  pending: dict


def _adapter(wrapper, point, call):
  y = call.next_fun(*call.args, **call.kwargs)
  reads = y if wrapper.options_dict["kind"] == "serial" else call.args[0]  # serial: the output; parallel: the input
  return y + wrapper.leaf(point)(reads).astype(y.dtype)


def _patch(wrapper, point, call):
  y = call.next_fun(*call.args, **call.kwargs)
  return y + wrapper.leaf(point)(call.args[0]).astype(y.dtype)


def _lora(wrapper, point, call):
  x = call.args[0]
  y = call.next_fun(*call.args, **call.kwargs)
  axes = getattr(call.module, "axis", -1)
  axes = tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)
  features = tuple(y.shape[x.ndim - len(axes):])
  update = wrapper.leaf(point)(x, axes, features, _kernel_names(call.module, len(axes) + len(features)))
  return y + update.astype(y.dtype)


def _prompt(wrapper, point, call):
  state = call.pending.setdefault(point, {})
  if call.name == "query":
    state["q"] = call.next_fun(*call.args, **call.kwargs)
    return state["q"]
  if call.name in ("key", "value"):
    state.setdefault(call.name, call.module)  # the projection itself, applied to the prompt tokens below
    state.setdefault("embed", call.args[0].shape[-1])  # the model width the projection reads
    return call.next_fun(*call.args, **call.kwargs)
  out_in = call.args[0]  # [batch, len, heads, head_dim]: the attention output before `out`
  mixed = wrapper.leaf(point)(state["q"], state["key"], state["value"], state["embed"])
  call.pending.pop(point)
  return call.next_fun(out_in + mixed.astype(out_in.dtype), *call.args[1:], **call.kwargs)


@dataclasses.dataclass(frozen=True)
class PeftKind:
  points: Callable[[base.Roles, dict], tuple[str, ...]]  # module paths where modules go
  missing: str  # what an encoder without points lacks (for the error)
  build: Callable[..., nn.Module]  # (options, dtype, param_dtype) -> the module at one point
  apply: Callable  # (wrapper, point, Call) -> the intercepted call's output
  trims_left_padding: bool  # True: the modules never read the left padding
  # the calls it intercepts: the point itself, or the projections of an attention module at a point
  children: tuple[str, ...] = ()
  options: Callable[[Any, dict], dict] = lambda encoder, options: options  # options read off the encoder


# adapters, LoRA and patches act per position and prompts are learned tokens every query attends
# to: none reads the left padding, so the encoder's answer (trims_left_padding) holds for each
PEFT = {
    "adapter": PeftKind(lambda roles, o: roles.sublayers, "sublayers",
                        lambda o, dt, pdt: Adapter(o["dim"], dt, pdt, name="adapter"), _adapter, True),
    "lora": PeftKind(lambda roles, o: tuple(p for p in roles.projections if p.rsplit("/", 1)[-1] in set(o.get("targets", ()))),
                     "projections named in lora.targets",
                     lambda o, dt, pdt: LoRA(o["rank"], dt, pdt, name="lora"), _lora, True),
    "prompt": PeftKind(lambda roles, o: roles.attention, "attention modules",
                       lambda o, dt, pdt: Prompt(o["num_prompts"], o["num_heads"], dt, pdt, name="prompt"), _prompt, True,
                       children=("query", "key", "value", "out"),
                       options=lambda encoder, o: {**o, "num_heads": getattr(encoder, "num_heads", None)}),
    "patch": PeftKind(lambda roles, o: roles.blocks, "blocks",
                      lambda o, dt, pdt: Adapter(o["dim"], dt, pdt, name="patch"), _patch, True),
}
KINDS = tuple(PEFT)


def points(roles: base.Roles, kind: str, options: dict) -> tuple[str, ...]:
  """The module paths of `roles` where modules of `kind` go (empty: the kind does not apply)."""
  if kind not in PEFT:
    raise ValueError(f"Unknown inserted module kind {kind!r}; valid: {list(KINDS)}")
  return PEFT[kind].points(roles, options)


def applicable_kinds(roles: base.Roles) -> list[str]:
  options = {"targets": LORA_TARGETS}
  return [k for k in KINDS if points(roles, k, options)]


class _Group(nn.Module):
  """Nested containers mirroring the encoder's module paths; a leaf holds one inserted module."""

  tree: tuple
  kind: str
  options: tuple  # sorted (name, value) pairs
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    self.members = {name: _Group(child or (), self.kind, self.options, self.dtype, self.param_dtype, name=name)
                    for name, child in self.tree}
    if not self.tree:  # a leaf: the point's own module
      self.module = PEFT[self.kind].build(dict(self.options), self.dtype, self.param_dtype)

  def leaf(self, parts: tuple[str, ...]):
    if not parts:
      return self.module
    return self.members[parts[0]].leaf(parts[1:])


class Inserted(Intercepting, nn.Module):
  """`encoder` with modules of one `kind` at `points` (see the module docstring)."""

  encoder: nn.Module
  kind: str
  points: tuple[str, ...]
  options: tuple  # sorted (name, value) pairs of the kind's options

  @property
  def trims_left_padding(self):
    return PEFT[self.kind].trims_left_padding and getattr(self.encoder, "trims_left_padding", False)

  @property
  def options_dict(self) -> dict:
    return dict(self.options)

  def setup(self):
    nn.share_scope(self, self.encoder)
    self.inserted = _Group(_tree(self.points), self.kind, self.options, self.encoder.dtype,
                           self.encoder.param_dtype, name="inserted")

  def leaf(self, point: str):
    return self.inserted.leaf(tuple(point.split("/")))

  def _interceptor(self):
    kind = PEFT[self.kind]
    by_path = {tuple(p.split("/")): p for p in self.points}
    pending = {}

    def intercept(next_fun, args, kwargs, context):
      if context.method_name != "__call__":
        return next_fun(*args, **kwargs)
      path = tuple(context.module.path)
      if kind.children:  # calls of named children of the point (an attention module's projections)
        point = by_path.get(path[:-1]) if path and path[-1] in kind.children else None
      else:
        point = by_path.get(path)
      if point is None:
        return next_fun(*args, **kwargs)
      return kind.apply(self, point, Call(context.module, path[-1], next_fun, args, kwargs, pending))

    return intercept


def build(encoder, kind: str, options: dict):
  """The encoder with modules of PEFT kind `kind` at every point its roles offer."""
  roles = encoder.roles()
  where = points(roles, kind, options)
  if not where:
    name = type(encoder).__name__
    raise ValueError(f"{kind} modules do not apply to {name}: it has no {PEFT[kind].missing}; "
                     f"kinds that apply to {name}: {applicable_kinds(roles)}")
  options = PEFT[kind].options(encoder, dict(options))
  return Inserted(encoder, kind, where, tuple(sorted(options.items())))
