"""Mesh and shardings from config: logical axis names on params -> mesh axes."""

from __future__ import annotations

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "model")
LOGICAL_AXES = ("batch", "vocab", "embed", "mlp", "heads", "kv", "layers", "length")


def make_mesh(mesh_cfg) -> jax.sharding.Mesh:
  """Mesh ('data', 'model') with sizes from config; -1 takes the remaining devices."""
  n = jax.device_count()
  data, model = int(mesh_cfg.data), int(mesh_cfg.model)
  if data == -1 and model == -1:
    raise ValueError("mesh: at most one of data/model may be -1")
  if data == -1:
    data = n // max(model, 1)
  if model == -1:
    model = n // max(data, 1)
  if data * model > n or data < 1 or model < 1:
    raise ValueError(f"mesh data={mesh_cfg.data} x model={mesh_cfg.model} needs more than the "
                     f"{n} available devices ({jax.devices()[0].platform})")
  # an explicit smaller mesh uses the first data*model devices (e.g. a 1-device reference run)
  return jax.make_mesh((data, model), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2,
                       devices=jax.devices()[: data * model])


def logical_rules(rules_cfg) -> tuple[tuple[str, str | None], ...]:
  """Validates the config's `(logical, mesh axis | None)` rules."""
  rules = tuple((str(a), None if b in (None, "", "none", "None") else str(b)) for a, b in rules_cfg)
  for logical, mesh_axis in rules:
    if logical not in LOGICAL_AXES:
      raise ValueError(f"sharding rule for unknown logical axis {logical!r}; valid: {list(LOGICAL_AXES)}")
    if mesh_axis is not None and mesh_axis not in MESH_AXES:
      raise ValueError(f"sharding rule {logical!r} -> {mesh_axis!r}: unknown mesh axis; valid: {list(MESH_AXES)}")
  return rules


def axis_shards(mesh, rules, logical: str) -> int:
  """How many pieces a dimension with logical axis `logical` is split into (1 = replicated)."""
  mesh_axis = dict(rules).get(logical)
  return int(mesh.shape[mesh_axis]) if mesh_axis is not None else 1


def param_shardings(abstract_boxed_params, mesh, rules):
  """NamedShardings for a tree of LogicallyPartitioned abstract params; checks divisibility."""
  specs = nn.get_partition_spec(abstract_boxed_params)
  shardings = nn.logical_to_mesh_sharding(specs, mesh, rules)
  shapes = nn.unbox(abstract_boxed_params)

  def check(path, shape, sharding):
    for dim, axis in zip(shape.shape, sharding.spec):
      axes = axis if isinstance(axis, tuple) else (axis,)
      size = int(np.prod([mesh.shape[a] for a in axes if a is not None]))
      if dim % size:
        raise ValueError(
            f"param {jax.tree_util.keystr(path)} {shape.shape}: dimension {dim} cannot be split over "
            f"mesh axes {axis} of size {size}; change the model size or the sharding rules")
  jax.tree_util.tree_map_with_path(check, shapes, shardings)
  return shardings


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  """Leading (batch) dimension split over 'data'."""
  return NamedSharding(mesh, P("data"))


def put_batch(batch: dict, mesh) -> dict:
  """Host batch (this process's rows) -> global arrays sharded on the batch axis over 'data'."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def to_host(tree):
  """Device arrays -> host numpy arrays, also arrays that span processes (a collective: every
  process must call it; an array sharded across processes is gathered whole onto every host, as
  large as the checkpoint a transfer restores anyway)."""
  from jax.experimental import multihost_utils

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if x.is_fully_replicated:
        return np.asarray(x.addressable_data(0))
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x))
  return jax.tree.map(get, tree)

