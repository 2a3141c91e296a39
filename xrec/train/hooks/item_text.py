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
    progress = spec.train.progress_bar and jax.process_index() == 0
    text = spec.model.text
    if text.tune:  # a tuned tower: cached token states below its layers, its layers' pretrained weights
      encoder = texts.load_encoder(text.encoder)
      self.values, self.info = texts.item_text_tower(spec.data, run.domain, encoder, text.tune_layers, text.tokens,
                                                     progress=progress)
      self.info.update(tune=text.tune, lora_rank=text.lora_rank if text.tune == "lora" else None)
      width, extra = encoder.dim, {"model.text.tokens": self.info["tokens"], "model.text.arch": encoder.tower_arch(),
                                   "model.text.buckets": self.info["buckets"]}
    else:
      table, self.info = texts.item_text_table(spec.data, run.domain, text.encoder, progress=progress)
      self.values, width, extra = {"": table}, int(table.shape[1]), {}
    if text.dim not in (0, width):
      raise ValueError(f"model.text.dim={text.dim} but the text encoder {self.info['encoder']!r} "
                       f"gives {width}-d vectors; leave model.text.dim=0")
    log.info("item text: %d items, %d without text (%s), %s (%s)%s", self.info["items"],
             self.info["text"]["without_text"], self.info["text"]["missing_policy"], self.info["encoder"],
             "cached" if self.info["reused"] else f"embedded in {self.info['seconds']:.1f}s",
             f"; tower: {text.tune} on the top {text.tune_layers} layers, {self.info['tokens']} tokens per item"
             if text.tune else "")
    return {"model.text.dim": width, **extra}

  def after_init(self, run, state: dict) -> dict:
    """The current catalogue's item text data (never trained nor loaded)."""
    params = set_item_text(sharding.to_host(state["params"]), run.plan.roles, self.values)
    return {**state, "params": jax.device_put(params, run.param_sh)}

  def results(self, run, final) -> dict:
    return {"model": {"item_text": self.info}}


def set_item_text(params, roles, values: dict):
  """`params` with the item text data (Roles.item_text) set: `values` {path below the role ("" for
  the role's own array): array}. Arrays with one row per item fill the first rows (the rest,
  sharding padding and a mask token, stay zero); the others must fit exactly."""
  flat = common.flatten(params)
  for sub, array in (values.items() if "" in values else common.flatten(values).items()):
    path = roles.item_text + (f"/{sub}" if sub else "")
    if path not in flat:
      raise ValueError(f"item text data {path!r} has no place in the model (its text params: "
                       f"{sorted(p for p in flat if p.startswith(roles.item_text))})")
    current, array = flat[path], np.asarray(array)
    by_rows = sub in ("", "states", "mask", "rank")  # one row per item id
    fits = (current.shape[0] >= array.shape[0] and current.shape[1:] == array.shape[1:] if by_rows
            else current.shape == array.shape)
    if not fits:
      raise ValueError(f"item text data {array.shape} does not fit the model's {path} {current.shape}")
    value = np.zeros(current.shape, current.dtype)
    value[:array.shape[0]] = array
    flat[path] = value
  return common.unflatten(flat)
