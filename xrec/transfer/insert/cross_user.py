"""Overlapping users (registry kind "cross_user"): the target model also reads each user's
source-domain history (merged sequences or a prefix token)."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from xrec.models import common
from xrec.models.common import with_axes
from xrec.transfer.insert.forwarding import Intercepting


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


def build(encoder, options: dict):
  if not encoder.causal or not encoder.roles().item_table:
    raise ValueError(f"overlapping-user models need a causal encoder with an item table; "
                     f"{type(encoder).__name__} is not one")
  if int(options["rows"]) < 1 or (options["mode"] == "prefix" and int(options["source_dim"]) < 1):
    raise ValueError("transfer.strategy='cross_user' needs the source history's sizes (the trainer sets "
                     "transfer.cross_user.rows / source_dim from data.source_domain and train.init_from)")
  return CrossUser(encoder, options["mode"], int(encoder.vocab_size), int(options["rows"]), int(options["source_dim"]))
