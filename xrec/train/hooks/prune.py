"""Pruning during training (strategies.RUNTIME: prune): masks (1 = kept), sharded like the params,
ride in the train state and its checkpoints; after every update pruned entries are zeroed; on the
schedule's steps the masks grow (xrec/transfer/prune.py); evaluations before the final sparsity are
no best-checkpoint candidates; pruned items are no longer recommended; results get the pruning
report and, for structured pruning, the smaller dense model built from it, evaluated."""

from __future__ import annotations

import dataclasses
import logging

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xrec import models
from xrec import sharding
from xrec.config import model_config
from xrec.data import pipeline
from xrec.evaluate import evaluator as evaluation
from xrec.models import common
from xrec.train.hooks.base import Hook
from xrec.transfer import prune as pruning

log = logging.getLogger("xrec")


class Prune(Hook):
  name = "prune"
  state_key = "masks"

  def init_state(self, run, state: dict):
    kind, ratio, events, start, end = run.plan.strategy.prune
    self.pruner = pruning.Pruner(kind, run.plan.roles, pipeline.item_counts(run.domain) if kind == "items" else None)
    self.pruner.check_removes_something(sharding.to_host(state["params"]), ratio)
    self.events = dict(pruning.schedule(ratio, events, max(run.num_steps, 1), start, end))
    return jax.jit(lambda p: jax.tree.map(jnp.ones_like, p), out_shardings=run.param_sh)(state["params"])

  def after_init(self, run, state: dict) -> dict:
    if self.pruner.kind == "items":  # a resumed run serves what its restored masks keep
      run.evaluate.candidates = pruning.served_items(sharding.to_host(state["masks"]), run.plan.roles)
    return state

  def after_update(self, params, state: dict):
    return jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, state["masks"])  # pruned stay exactly zero

  def steps_with_work(self, run) -> frozenset:
    return frozenset(self.events)

  def after_step(self, run, step: int, state: dict) -> dict:
    if step not in self.events:
      return state
    params = sharding.to_host(state["params"])  # new masks at the scheduled ratio; pruned entries zeroed now
    masks = self.pruner.masks(params, self.events[step])
    log.info("step %d: pruned to %.1f%% (%s)", step, 100 * self.events[step], self.pruner.kind)
    if self.pruner.kind == "items":  # pruned items are no longer recommended
      run.evaluate.candidates = pruning.served_items(masks, run.plan.roles)
    return {**state, "masks": jax.device_put(masks, run.param_sh),
            "params": jax.device_put(jax.tree.map(lambda p, m: p * m, params, masks), run.param_sh)}

  def min_best_step(self, run) -> int:
    return max(self.events, default=0)  # the model must have reached its final sparsity

  def results(self, run, final) -> dict:
    return {"pruning": pruning_report(run, final.best_params, final.state["masks"], final.test)}


def pruning_report(run, best_params, masks, test) -> dict:
  """Sparsity and size of the pruned model; for structured pruning, the smaller dense model built
  from it, evaluated (same scores, faster)."""
  model_cfg, plan, domain = run.spec.model, run.plan, run.domain
  kind, ratio, events, start, end = plan.strategy.prune
  masks = sharding.to_host(masks)
  params = sharding.to_host(best_params)
  flat_m = common.flatten(masks)
  nonzero = int(sum(np.count_nonzero(np.asarray(v)) for v in jax.tree.leaves(params)))
  pruner = pruning.Pruner(kind, plan.roles, pipeline.item_counts(domain) if kind == "items" else None)
  report = {"kind": kind, "ratio": ratio, "events": events, "start": start, "end": end,
            "sparsity_of_blocks": pruning.sparsity(params, masks, pruner.prunable(flat_m)),
            "items_served": int(pruning.served_items(masks, plan.roles)[1:domain.num_items + 1].sum()),
            "params": common.param_count(params), "nonzero_params": nonzero,
            "stored_bytes_sparse": nonzero * 4 + nonzero * 4}  # value + index per kept entry
  dense = lambda small, small_params, fields, num_items, dom: _dense_report(  # noqa: E731
      small, small_params, fields, num_items, dom, run, test)
  if kind == "items":  # a model over the kept items only: a smaller table, fewer scores per user
    served = int(report["items_served"])
    small = served_model(model_cfg, kind, {"num_items": served}, domain.num_items)
    shapes = {p: tuple(v.shape) for p, v in common.flatten(nn.unbox(_abstract_params(small, model_cfg.max_len))).items()}
    small_params, id_map = pruning.shrink_items(params, masks, plan.roles, shapes, domain.num_items,
                                                bool(small.uses_mask_token))
    kept_ids = np.flatnonzero((id_map >= 1) & (id_map <= served))
    dense_domain = dataclasses.replace(
        domain, id_map=id_map[:domain.num_items + 1] if domain.id_map is None else id_map[domain.id_map],
        item_keys=[domain.item_keys[i - 1] for i in kept_ids] + ["<pruned>"],
        pseudo={u: (id_map[b], id_map[a]) for u, (b, a) in domain.pseudo.items()} if domain.pseudo else None)
    report["dense"] = dense(small, small_params, {"num_items": served}, served, dense_domain)
  elif kind == "dims":  # item tables of the kept dims: fewer bytes per item, fewer multiply-adds per score
    small_params, fields = pruning.shrink_dims(params, masks, plan.roles)
    small = served_model(model_cfg, kind, fields, domain.num_items)
    report["dense"] = dense(small, small_params, {"item_columns": len(fields["item_columns"])},
                            domain.num_items, domain)
  elif kind in ("heads", "mlp"):
    # the masks of the best checkpoint's step (masks only grow), so shrink the best params with the final masks
    small_params, fields = pruning.shrink(params, masks, kind, plan.roles)
    small = served_model(model_cfg, kind, fields, domain.num_items)
    report["dense"] = dense(small, small_params, fields, domain.num_items, domain)
  return report


def served_model(model_cfg, kind: str | None, fields: dict, num_items: int):
  """The module a run serves: its own model (kind None, or unstructured magnitude pruning), or the
  smaller dense model structured pruning makes of it, from the fields its pruning report records:
  items {"num_items": kept items} (the table keeps one more row: pruned ids map to it), dims
  {"item_columns": kept dims}, heads / mlp the encoder's own fields (kept heads / channels)."""
  if kind == "items":
    return models.build(model_config(model_cfg, {}), int(fields["num_items"]) + 1)
  if kind == "dims":
    return models.build(model_config(model_cfg, fields), num_items)
  if kind in ("heads", "mlp"):
    cfg = model_config(model_cfg, {})
    with cfg.unlocked():
      own = cfg[model_cfg.name]
      if kind == "heads":  # fewer heads of the same width each
        own.head_dim = own.get("head_dim", 0) or model_cfg.embed_dim // own.num_heads
      own.update(fields)
    return models.build(cfg, num_items)
  return models.build(model_config(model_cfg, {}), num_items)


def _abstract_params(module, max_len: int):
  return jax.eval_shape(
      lambda: module.init({"params": jax.random.key(0)}, jnp.ones((1, max_len), jnp.int32))["params"])


def _dense_report(small, small_params, fields, num_items, domain, run, test) -> dict:
  """The structurally pruned model as a smaller dense one, evaluated on the test split (after an
  untimed warm-up batch, so its users/s compares with the masked model's)."""
  spec = run.spec
  small_sh = sharding.param_shardings(_abstract_params(small, spec.model.max_len), run.mesh, run.rules)
  evaluate = evaluation.Evaluator(small, num_items, spec.model.max_len, spec.eval, run.mesh, small_sh)
  small_params = jax.device_put(small_params, small_sh)
  evaluate.warm_up(small_params, domain)
  dense = evaluate(small_params, domain, "test")
  return {"model_fields": fields, "params": common.param_count(small_params),
          "stored_bytes": int(sum(np.asarray(v).nbytes for v in jax.tree.leaves(small_params))),
          "test": dense, "eval_users_per_second": dense["users_per_second"],
          "masked_eval_users_per_second": test["users_per_second"]}
