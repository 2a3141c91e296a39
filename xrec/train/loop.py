"""train_and_evaluate(config, workdir): the whole run, importable (launch.py is flags only)."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from xrec import models
from xrec.data import pipeline
from xrec.evaluate import evaluator as E
from xrec.models import common, losses, popularity
from xrec.train import checkpoint as ckpt
from xrec.train import optimizer as O
from xrec import sharding as S
from xrec.train import writer as W
from xrec.transfer import apply as transfer
from xrec.transfer import schedule as transfer_schedule
from xrec.transfer import vocab

log = logging.getLogger("xrec")
ITEM_KEYS_FILE = "item_keys.json"


def validate(config) -> None:
  """Checks names and ranges before any work; errors list the valid choices."""
  if config.model.name not in models.MODELS:
    raise ValueError(f"Unknown model {config.model.name!r}; valid: {list(models.MODELS)}")
  losses.get_loss(config.loss.name)
  if config.loss.sampling not in ("uniform", "popularity"):
    raise ValueError(f"Unknown loss.sampling {config.loss.sampling!r}; valid: ['popularity', 'uniform']")
  models.dtype(config.model.compute_dtype)
  metric = config.train.best_metric
  valid_metrics = [f"{m}@{k}" for m in ("hr", "recall", "ndcg", "mrr") for k in config.eval.ks]
  if metric not in valid_metrics:
    raise ValueError(f"train.best_metric {metric!r} is not computed; valid: {valid_metrics}")
  S.logical_rules(config.sharding.rules)
  if config.train.batch_size < 1 or config.eval.batch_size < 1:
    raise ValueError("train.batch_size and eval.batch_size must be >= 1")
  if config.train.eval_every_steps < 1:
    raise ValueError(f"train.eval_every_steps={config.train.eval_every_steps} must be >= 1")
  if config.train.num_steps < 0:
    raise ValueError(f"train.num_steps={config.train.num_steps} must be >= 0 (0 = from train.num_epochs)")


def total_steps(config, batches: pipeline.TrainBatches) -> int:
  """The run's budget in optimizer steps; a budget shorter than one evaluation interval is an error
  (early stopping and model selection need evaluations inside the budget)."""
  every = config.train.eval_every_steps
  if config.train.num_steps > 0:
    steps = int(config.train.num_steps)
    if steps < every:
      raise ValueError(f"train.num_steps={steps} is below one evaluation interval "
                       f"(train.eval_every_steps={every}); use train.num_steps >= {every} or lower "
                       "train.eval_every_steps")
    return steps
  steps = max(1, math.ceil(config.train.num_epochs * batches.steps_per_epoch))
  if steps < every:
    raise ValueError(f"train.num_epochs={config.train.num_epochs:g} over {len(batches.users)} training users "
                     f"(batch {config.train.batch_size}) is {steps} steps, below one evaluation interval "
                     f"(train.eval_every_steps={every}); set train.num_steps >= {every} (a budget in "
                     "steps) or lower train.eval_every_steps")
  return steps


def create_state(module, tx, max_len: int, seed: int, mesh, rules):
  """Params and optimizer state created already sharded: eval_shape -> shardings -> jit(init)."""
  dummy = jnp.ones((1, max_len), jnp.int32)
  rng = jax.random.key(seed)

  def init_params(rng):
    return module.init({"params": rng, "dropout": rng}, dummy)["params"]

  boxed = jax.eval_shape(init_params, rng)
  param_sh = S.param_shardings(boxed, mesh, rules)

  def init_state(rng):
    params = nn.unbox(init_params(rng))
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": tx.init(params)}

  abstract = jax.eval_shape(init_state, rng)
  opt_sh = transfer_schedule.opt_state_shardings(tx, abstract["opt_state"], param_sh, S.replicated(mesh))
  state_sh = {"step": S.replicated(mesh), "params": param_sh, "opt_state": opt_sh}
  state = jax.jit(init_state, out_shardings=state_sh)(rng)
  return state, state_sh


def make_train_step(module, tx, loss_cfg, num_items: int, state_sh, mesh, sampling_probs=None):
  loss_fn = losses.get_loss(loss_cfg.name)

  def step(state, batch, base_rng):
    rng = jax.random.fold_in(base_rng, state["step"])
    dropout_rng, loss_rng = jax.random.split(rng)

    def compute_loss(params):
      hidden, table, bias = module.apply({"params": params}, batch["inputs"], deterministic=False,
                                         rngs={"dropout": dropout_rng})
      return loss_fn(hidden, batch["targets"], table, bias, num_items=num_items, rng=loss_rng,
                     num_negatives=loss_cfg.num_negatives, sampling_probs=sampling_probs)

    (loss, count), grads = jax.value_and_grad(compute_loss, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = {"step": state["step"] + 1, "params": params, "opt_state": opt_state}
    return new_state, {"loss": loss, "positions": count, "grad_norm": optax.tree.norm(grads)}

  return jax.jit(step, in_shardings=(state_sh, S.batch_sharding(mesh), None),
                 out_shardings=(state_sh, S.replicated(mesh)), donate_argnums=(0,))


def _run_info(config, mesh, domain, module_params) -> dict:
  dev = jax.devices()[0]
  return {
      "device_kind": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
      "process_count": jax.process_count(), "mesh": dict(mesh.shape), "jax_version": jax.__version__,
      "param_count": common.param_count(module_params),
      "dataset": {"name": config.data.name, "domain": domain.name, "users": domain.num_users,
                  "items": domain.num_items, "user_fraction": config.data.user_fraction,
                  "training_users": int(len(domain.train_users)),
                  "evaluation_users": int(len(domain.eval_users))},
  }


def _item_overlap(config, domain) -> dict | None:
  """Overlap of the target's catalogue with the pretrained model's (train.init_from), by raw key."""
  if not config.train.init_from:
    return None
  return vocab.item_overlap(_item_keys(config.train.init_from), domain.item_keys, domain.item_frequency)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs training with periodic evaluation and checkpoints; returns (and writes) results.json."""
  t_start = time.time()
  validate(config)
  os.makedirs(workdir, exist_ok=True)
  mesh = S.make_mesh(config.mesh)
  rules = S.logical_rules(config.sharding.rules)
  max_len = config.model.max_len

  domain = pipeline.load_domain(config.data)
  t_data = time.time()
  if jax.process_index() == 0:  # the run's item vocabulary: transfer maps rows by these raw keys
    W.write_json_atomic(os.path.join(workdir, ITEM_KEYS_FILE),
                        {"dataset": config.data.name, "domain": domain.name, "item_keys": domain.item_keys})
  module = models.build(config.model, domain.num_items, max_len)
  if config.model.name == "popularity":
    return _fit_popularity(config, workdir, module, domain, mesh, rules, t_start, t_data)
  overlap = _item_overlap(config, domain)
  plan = transfer.prepare(config, overlap)  # strategy: inserted modules, what loads, what trains
  module = module.clone(**plan.model_fields)
  if plan.not_applicable:
    log.warning("transfer %s: %s", plan.strategy.name, plan.not_applicable)

  batches = pipeline.TrainBatches(domain, config.train.batch_size, max_len, config.seed,
                                  jax.process_index(), jax.process_count())
  num_steps = total_steps(config, batches) if plan.train else 0  # zero_shot: evaluate only
  schedule = O.learning_rate_schedule(config.optim, max(num_steps, 1))
  tx = plan.make_optimizer(lambda: O.make_optimizer(config.optim, max(num_steps, 1))[0])
  state, state_sh = create_state(module, tx, max_len, config.seed, mesh, rules)
  param_sh = state_sh["params"]

  init = ckpt.resolve_init(workdir, config.train)
  report = None
  meta = {"best_value": None, "best_step": None, "evals_since_best": 0, "last_eval_step": None,
          "evaluations": 0}
  if init.kind in ("resume_workdir", "resume_path"):
    state, meta = ckpt.restore_state(init.path, state)
  elif init.kind == "pretrained":
    if not plan.strategy.load:
      raise ValueError(f"train.init_from={init.path!r} is set but transfer.strategy="
                       f"{plan.strategy.name!r} loads nothing; pick a strategy that loads "
                       "(e.g. full_finetune) or clear train.init_from")
    pretrained, _ = ckpt.restore_best_params(init.path)
    params, report = plan.init_params(jax.device_get(state["params"]), pretrained,
                                      _item_keys(init.path), domain.item_keys)
    state["params"] = jax.device_put(params, param_sh)
  elif plan.strategy.load:
    raise ValueError(f"transfer.strategy={plan.strategy.name!r} starts from a pretrained model: "
                     "set train.init_from to the pretraining run's workdir")
  budget = plan.budget(state["params"], report)
  log.info(plan.describe(budget))
  start_step = int(state["step"])
  log.info("data: %s/%s %d users (%d train, %d evaluated), %d items | model: %s, %s params | mesh %s",
           config.data.name, domain.name, domain.num_users, len(domain.train_users),
           len(domain.eval_users), domain.num_items, config.model.name,
           f"{common.param_count(state['params']):,}", dict(mesh.shape))
  log.info("init: %s %s (step %d of %d)", init.kind, init.path, start_step, num_steps)

  sampling_probs = None
  if config.loss.name == "sampled_softmax" and config.loss.sampling == "popularity":
    counts = pipeline.item_counts(domain).astype(np.float64)
    probs = np.zeros(module.vocab_size)
    probs[: len(counts)] = counts / counts.sum()
    sampling_probs = jnp.asarray(probs, jnp.float32)
  train_step = make_train_step(module, tx, config.loss, domain.num_items, state_sh, mesh, sampling_probs)
  evaluate = E.Evaluator(module, domain.num_items, max_len, config.eval, mesh, param_sh)

  is_main = jax.process_index() == 0
  writer = W.MetricWriter(workdir, resume_step=start_step if init.kind == "resume_workdir" else None,
                          enabled=is_main)
  latest = ckpt.latest_manager(workdir, config.train.keep_checkpoints)
  best = ckpt.best_manager(workdir)
  base_rng = jax.random.key(config.seed + 1)
  metric = config.train.best_metric
  stopped_early = False

  def run_eval(step):
    nonlocal stopped_early
    result = evaluate(state["params"], domain, "valid")
    writer.write(step, "valid", result)
    meta["evaluations"] = meta.get("evaluations", 0) + 1
    meta["last_eval_step"] = step
    value = result[metric]
    if meta["best_value"] is None or value > meta["best_value"]:
      meta.update(best_value=value, best_step=step, evals_since_best=0)
      ckpt.save_best(best, step, state["params"], {"step": step, "valid": result})
    else:
      meta["evals_since_best"] += 1
    patience = config.train.early_stopping_patience
    stopped_early = bool(patience and meta["evals_since_best"] >= patience)
    log.info("step %d valid %s=%.4f (best %.4f at step %s)", step, metric, value,
             meta["best_value"], meta["best_step"])
    return result

  t_train = time.time()
  train_seconds = 0.0
  if start_step == 0 and (config.train.eval_at_start or num_steps == 0) and meta["best_step"] is None:
    run_eval(0)
  bar = W.progress_bar(num_steps, start_step, config.train.progress_bar and is_main)
  step = start_step
  killed = False
  stop_at = start_step + config.train.stop_after_steps if config.train.stop_after_steps > 0 else None
  t_window, window_examples = time.time(), 0
  patience = config.train.early_stopping_patience
  finished = start_step >= num_steps or bool(patience and meta["evals_since_best"] >= patience)
  for batch in batches.iterate(start_step, num_steps) if not finished else ():
    state, stats = train_step(state, S.put_batch(batch, mesh), base_rng)
    step += 1
    window_examples += config.train.batch_size
    bar.update(1)
    if step % config.train.log_every_steps == 0 or step == num_steps:
      stats = jax.device_get(stats)
      elapsed = time.time() - t_window
      row = {"loss": float(stats["loss"]), "grad_norm": float(stats["grad_norm"]),
             "lr": float(schedule(step - 1)), "examples_per_second": window_examples / max(elapsed, 1e-9)}
      writer.write(step, "train", row)
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      t_window, window_examples = time.time(), 0
    if step % config.train.eval_every_steps == 0 or step == num_steps:
      run_eval(step)
    if step % config.train.checkpoint_every_steps == 0 or step == num_steps or stopped_early:
      ckpt.save_state(latest, step, state, dict(meta))
    if stopped_early:
      log.info("early stopping at step %d: %d evaluations without improvement", step,
               meta["evals_since_best"])
      break
    if stop_at is not None and step >= stop_at:
      killed = True
      break
  bar.close()
  train_seconds = time.time() - t_train
  latest.wait_until_finished()
  best.wait_until_finished()
  latest.close()
  best.close()
  if killed:  # simulated kill: no final evaluation, no results
    writer.close()
    return {"stopped_at_step": step}

  # Final metrics at the best validation checkpoint (never the final params, unless they are best).
  t_final = time.time()
  best_params, best_step = ckpt.restore_best_params(workdir, state["params"])
  valid, valid_ranks = evaluate(best_params, domain, "valid", with_ranks=True)
  test, test_ranks = evaluate(best_params, domain, "test", with_ranks=True)
  last_eval = meta.get("last_eval_step")
  results = {
      "config": config.to_dict(),
      "protocol": E.protocol(config.eval, domain.population),
      "init": {"kind": init.kind, "path": init.path},
      "transfer": {"strategy": plan.strategy.name, **budget,
                   "items": report["items"] if report else None,
                   "item_overlap": overlap, "item_tables": plan.item_tables,
                   "not_applicable": plan.not_applicable or None},
      "best_step": int(best_step),
      "final_step": int(step),
      "stopped_early": stopped_early,
      "budget": {"num_steps": int(num_steps), "steps_run": int(step),
                 "warmup_steps": O.warmup_steps(config.optim, max(num_steps, 1)) if num_steps else 0,
                 "eval_every_steps": int(config.train.eval_every_steps),
                 "early_stopping_patience": int(config.train.early_stopping_patience),
                 "evaluations": int(meta.get("evaluations", 0)), "last_eval_step": last_eval,
                 "stopped_early": stopped_early,
                 # the best validation was the last one: the run was still improving when stopped
                 "best_is_last_eval": bool(num_steps > 0 and last_eval is not None
                                           and int(best_step) == int(last_eval) and last_eval > 0)},
      "valid": valid,
      "test": test,
      "per_user": {"population_sha256": domain.population["keys_sha256"],
                   "valid_rank": valid_ranks.tolist(), "test_rank": test_ranks.tolist()},
      **_run_info(config, mesh, domain, state["params"]),
  }
  results["wall_seconds"] = {"data": t_data - t_start, "train": train_seconds,
                             "final_eval": time.time() - t_final, "total": time.time() - t_start}
  writer.write(int(best_step), "test", results["test"])
  writer.close()
  if is_main:
    W.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results


def _item_keys(workdir: str) -> list[str]:
  path = os.path.join(workdir, ITEM_KEYS_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: the pretrained run's item vocabulary is needed to "
                            "map item rows by raw key")
  with open(path) as f:
    return json.load(f)["item_keys"]


def _fit_popularity(config, workdir, module, domain, mesh, rules, t_start, t_data):
  """Popularity has no training loop: count, evaluate, write results."""
  counts = pipeline.item_counts(domain)
  boxed = jax.eval_shape(functools.partial(module.init, method="score_last"),
                         jax.random.key(0), jnp.ones((1, config.model.max_len), jnp.int32))
  param_sh = S.param_shardings(boxed["params"], mesh, rules)
  params = jax.device_put(popularity.fit_params(counts, module.vocab_size)["params"], param_sh)
  evaluate = E.Evaluator(module, domain.num_items, config.model.max_len, config.eval, mesh, param_sh)
  valid, valid_ranks = evaluate(params, domain, "valid", with_ranks=True)
  test, test_ranks = evaluate(params, domain, "test", with_ranks=True)
  results = {
      "config": config.to_dict(),
      "protocol": E.protocol(config.eval, domain.population),
      "init": {"kind": "fitted", "path": ""},
      "valid": valid,
      "test": test,
      "per_user": {"population_sha256": domain.population["keys_sha256"],
                   "valid_rank": valid_ranks.tolist(), "test_rank": test_ranks.tolist()},
      **_run_info(config, mesh, domain, params),
  }
  results["wall_seconds"] = {"data": t_data - t_start, "total": time.time() - t_start}
  if jax.process_index() == 0:
    W.write_json_atomic(os.path.join(workdir, "results.json"), results)
  return results
