"""The train state and the one jitted step (xrec/train/loop.py runs it).

  create_state     params and optimizer state created already sharded (eval_shape -> shardings ->
                   jit(init, out_shardings))
  make_train_step  one update over the streams' batches: the objective's weighted terms plus the
                   runtime hooks' penalties, the optimizer, the hooks' after-update (e.g. pruning
                   masks); the state is one pytree {step, params, opt_state, <hook state>...,
                   frozen: {hook: constants}}, donated
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from xrec import sharding
from xrec.train import objectives, optimizer
from xrec.transfer import schedule as schedules

FROZEN = "frozen"  # state key of the hooks' constants (replicated, never checkpointed)


def create_state(module, tx, max_len: int, seed: int, mesh, rules):
  """Params and optimizer state created already sharded: eval_shape -> shardings -> jit(init)."""
  dummy = jnp.ones((1, max_len), jnp.int32)
  rng = jax.random.key(seed)

  def init_params(rng):
    return module.init({"params": rng, "dropout": rng}, dummy)["params"]

  boxed = jax.eval_shape(init_params, rng)
  param_sh = sharding.param_shardings(boxed, mesh, rules)

  def init_state(rng):
    params = nn.unbox(init_params(rng))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_state, rng)
  replicated = sharding.replicated(mesh)
  opt_sh = schedules.opt_state_shardings(tx, abstract["opt_state"], param_sh, replicated)
  state_sh = {"step": replicated, "params": param_sh, "opt_state": opt_sh}
  state = jax.jit(init_state, out_shardings=state_sh)(rng)
  return state, state_sh


def checkpointed(state: dict) -> dict:
  """The part of the train state a checkpoint holds (everything but the hooks' constants)."""
  return {k: v for k, v in state.items() if k != FROZEN}


def make_train_step(module, tx, objective: objectives.Objective, num_items: int, state_sh, mesh,
                    sampling_probs=None, num_steps: int = 1, hooks=(), vocab_shards: int = 1):
  """One jitted step over the streams' batches: the objective's weighted terms and each hook's
  penalty, one update, each hook's after_update. `state_sh` covers every key of the state.
  tx: an optimizer.Runtime (its peak learning rate and schedule steps inputs of the compiled step,
  as is num_steps: runs that differ only in them share one program) or a fixed optax transformation.
  vocab_shards: the devices the item table is split over (sharding.axis_shards), for terms that
  lay out their work per shard (chunked_softmax)."""
  rt = tx if isinstance(tx, optimizer.Runtime) else optimizer.Runtime(lambda _values: tx, {})

  def step(state, batches, base_rng, inputs):
    values, total_steps = inputs
    tx = rt.build(values)
    rng = jax.random.fold_in(base_rng, state["step"])
    progress = state["step"].astype(jnp.float32) / total_steps.astype(jnp.float32)
    hook_inputs = {}
    for hook in hooks:
      hook_inputs.update(hook.objective_inputs(state))

    def total(params):
      loss, parts = objective.loss(module, params, batches, rng, num_items, sampling_probs, progress,
                                   vocab_shards=vocab_shards, **hook_inputs)
      for hook in hooks:
        extra = hook.penalty(params, state)
        if extra is not None:
          value, stats = extra
          loss = loss + value
          parts = {**parts, hook.name: value, **{f"{hook.name}/{k}": v for k, v in stats.items()}}
      return loss, parts

    (loss, parts), grads = jax.value_and_grad(total, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    for hook in hooks:
      params = hook.after_update(params, state)
    new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    # each term's loss as loss/<term>, the values terms report as <term>/<name>
    grad_norm = optax.tree.norm(grads)
    stats = {"loss": loss, "grad_norm": grad_norm,
             **{(k if "/" in k else f"loss/{k}"): v for k, v in parts.items()}}
    return new_state, {**stats, "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}

  replicated = sharding.replicated(mesh)
  jitted = jax.jit(step, in_shardings=(state_sh, sharding.batch_sharding(mesh), None, replicated),
                   out_shardings=(state_sh, replicated), donate_argnums=(0,))
  values = {k: jnp.asarray(v, jnp.float32 if isinstance(v, float) else jnp.int32) for k, v in rt.values.items()}
  return TrainStep(jitted, jax.device_put((values, jnp.int32(max(num_steps, 1))), replicated))


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """`step(state, batches, base_rng) -> (state, stats)`; `lower(...)` for cost analysis. `inputs`:
  what the compiled step is given at every call: (the schedule's values, num_steps)."""

  jitted: object
  inputs: tuple

  def __call__(self, state, batches, base_rng):
    return self.jitted(state, batches, base_rng, self.inputs)

  def lower(self, state, batches, base_rng):
    return self.jitted.lower(state, batches, base_rng, self.inputs)
