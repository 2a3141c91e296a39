"""L2-SP (Li, Grandvalet & Davoine, ICML 2018; strategies.RUNTIME: l2sp): fine-tune everything
while a penalty keeps the weights near their pretrained starting point,

    alpha / 2 * ||w_loaded - w_loaded^0||^2  +  beta / 2 * ||w_fresh||^2

(w^0: the params as loaded; loaded / fresh: the transfer report's paths, so the item rows of a
new catalogue count as loaded from where the key mapping put them). The starting point is extra
train state, sharded like the params and checkpointed with them, so a resumed run keeps pulling
toward the pretrained weights, not toward where it resumed."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xrec.models import common
from xrec.train.hooks.base import Hook


class L2SP(Hook):
  name = "l2sp"
  state_key = "anchor"

  def init_state(self, run, state: dict):
    o = run.spec.transfer.l2sp
    self.alpha, self.beta = float(o.alpha), float(o.beta)
    return _copy(state["params"], run.param_sh)  # replaced by the loaded params in after_init

  def after_init(self, run, state: dict) -> dict:
    report = run.report or {}
    self.loaded = frozenset(report.get("loaded") or ())
    if not self.loaded:
      raise ValueError("transfer.strategy='l2sp' pulls toward pretrained weights, but nothing was loaded "
                       f"(init: {run.init.kind}); set train.init_from to the pretraining run's workdir")
    if run.init.kind == "pretrained":  # a resumed run restored its anchor from the checkpoint
      state = {**state, "anchor": _copy(state["params"], run.param_sh)}
    return state

  def penalty(self, params, state: dict):
    flat, anchor = common.flatten(params), common.flatten(state["anchor"])
    to_start = sum(jnp.sum(jnp.square(flat[p].astype(jnp.float32) - anchor[p].astype(jnp.float32)))
                   for p in flat if p in self.loaded)
    fresh = sum((jnp.sum(jnp.square(flat[p].astype(jnp.float32))) for p in flat if p not in self.loaded),
                jnp.zeros((), jnp.float32))
    loss = 0.5 * self.alpha * to_start + 0.5 * self.beta * fresh
    return loss, {"distance": jnp.sqrt(to_start)}


def _copy(params, shardings):
  return jax.jit(lambda p: jax.tree.map(jnp.copy, p), out_shardings=shardings)(params)
