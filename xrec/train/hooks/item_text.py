"""Items by their text (model.item_repr != "id"): the catalogue's text embeddings, computed once per
(encoder, texts) and cached (xrec/train/item_text.py), fill the model's frozen text table after
every load; results record what embedded them."""

from __future__ import annotations

import logging

import jax
import numpy as np

from xrec import models
from xrec import sharding
from xrec.models import common
from xrec.train import item_text as texts
from xrec.train.hooks.base import Hook

log = logging.getLogger("xrec")


class ItemText(Hook):
  name = "item_text"

  @classmethod
  def wanted(cls, spec, runtime) -> bool:
    return spec.model.item_repr != "id"

  def configure(self, run) -> dict:
    spec = run.spec
    models.check_item_repr(spec.model)  # an encoder or option that cannot take text fails before embedding
    self.table, self.info = texts.item_text_table(spec.data, run.domain, spec.model.text.encoder,
                                                  progress=spec.train.progress_bar and jax.process_index() == 0)
    if spec.model.text.dim not in (0, self.table.shape[1]):
      raise ValueError(f"model.text.dim={spec.model.text.dim} but the text encoder {self.info['encoder']!r} "
                       f"gives {self.table.shape[1]}-d vectors; leave model.text.dim=0")
    log.info("item text: %d items, %d without text (%s), %s (%s)", self.info["items"],
             self.info["text"]["without_text"], self.info["text"]["missing_policy"], self.info["encoder"],
             "cached" if self.info["reused"] else f"embedded in {self.info['seconds']:.1f}s")
    return {"model.text.dim": int(self.table.shape[1])}

  def after_init(self, run, state: dict) -> dict:
    """The current catalogue's item text embeddings (never trained nor loaded)."""
    params = set_item_text(sharding.to_host(state["params"]), run.plan.roles, self.table)
    return {**state, "params": jax.device_put(params, run.param_sh)}

  def results(self, run, final) -> dict:
    return {"model": {"item_text": self.info}}


def set_item_text(params, roles, table):
  """`params` with the item text table (Roles.item_text) holding `table` [num_items + 1, dim] in
  its first rows (the rest, sharding padding and a mask token, stay zero)."""
  flat = common.flatten(params)
  current = flat[roles.item_text]
  if current.shape[1] != table.shape[1] or current.shape[0] < table.shape[0]:
    raise ValueError(f"item text embeddings {table.shape} do not fit the model's text table {current.shape}")
  value = np.zeros(current.shape, current.dtype)
  value[:table.shape[0]] = table
  flat[roles.item_text] = value
  return common.unflatten(flat)
