"""train_and_evaluate(config, workdir): one stage, importable (launch.py runs stages through
xrec/train/runner.py). It reads as its recipe; the strategy- and data-specific work happens in the
runtime hooks (xrec/train/hooks), which this file calls at fixed points and never names:

  build_run        load the data, resolve the hooks, build the model (encoder + transfer plan +
                   objective), write the run's item keys and model.json, let hooks change the data
  make_streams     the objective's batch streams (target, source) and the step budget
  start_state      the train state (xrec/train/step.py) with the hooks' carried state, the load
                   priority (initial_params: resume > explicit resume > pretrained > scratch;
                   fitted models count instead), the hooks' after-load work and constants
  fit              steps, periodic evaluation and checkpoints, early stopping, divergence checks
  finish           the metrics at the best validation checkpoint, written to results.json
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xrec import models
from xrec import runfiles
from xrec import runindex
from xrec import sharding
from xrec import zoo
from xrec.config import MAX_COUNT, check_ranges, model_config, with_overrides
from xrec.data import augment, fingerprint, pipeline
from xrec.data.preprocess import DEDUP
from xrec.evaluate import evaluator as evaluation
from xrec.evaluate.metrics import SAMPLED_PREFIX, TARGET_IN_HISTORY
from xrec.models import common
from xrec.train import checkpoint as ckpt
from xrec.train import hooks as runtime
from xrec.train import objectives
from xrec.train import optimizer as optim
from xrec.train import step as steps
from xrec.train import writer as writing
from xrec.transfer import apply as transfer
from xrec.transfer import strategies
from xrec.transfer import vocab

log = logging.getLogger("xrec")


def validate(config) -> None:
  """Checks names and ranges before any work; errors list the valid choices."""
  check_ranges(config)
  models.model_class(config.model.name)
  models.dtype(config.model.compute_dtype)
  metric = config.train.best_metric
  valid_metrics = [f"{m}@{k}" for m in ("hr", "recall", "ndcg", "mrr") for k in config.eval.ks]
  if config.eval.negatives:
    valid_metrics += [SAMPLED_PREFIX + m for m in valid_metrics]
  if config.eval.negatives_sampling not in ("uniform", "popularity"):
    raise ValueError(f"eval.negatives_sampling={config.eval.negatives_sampling!r} is not valid; valid: "
                     "['uniform', 'popularity']")
  if metric not in valid_metrics:
    raise ValueError(f"train.best_metric {metric!r} is not computed; valid: {valid_metrics}")
  sharding.logical_rules(config.sharding.rules)
  if config.eval.target_in_history not in TARGET_IN_HISTORY:
    raise ValueError(f"eval.target_in_history={config.eval.target_in_history!r} is not valid; valid: "
                     f"{list(TARGET_IN_HISTORY)}")
  if config.data.preprocess.dedup not in DEDUP:
    raise ValueError(f"data.preprocess.dedup={config.data.preprocess.dedup!r} is not valid; valid: {list(DEDUP)}")
  if config.transfer.strategy not in strategies.STRATEGIES:
    raise ValueError(f"Unknown transfer strategy {config.transfer.strategy!r}; valid: {sorted(strategies.STRATEGIES)}")
  for pair in config.objective.terms:
    if len(pair) != 2 or pair[0] not in objectives.TERMS:
      raise ValueError(f"objective.terms entry {tuple(pair)!r}: (name, weight) with a name in {sorted(objectives.TERMS)}")


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
  if steps > MAX_COUNT:
    raise ValueError(f"train.num_epochs={config.train.num_epochs:g} over {len(batches.users)} training users "
                     f"(batch {config.train.batch_size}) is {steps:,} steps, above the {MAX_COUNT:,} a run can "
                     "count; lower train.num_epochs")
  if steps < every:
    raise ValueError(f"train.num_epochs={config.train.num_epochs:g} over {len(batches.users)} training users "
                     f"(batch {config.train.batch_size}) is {steps} steps, below one evaluation interval "
                     f"(train.eval_every_steps={every}); set train.num_steps >= {every} (a budget in "
                     "steps) or lower train.eval_every_steps")
  return steps


# --- the model ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Components:
  """What a run trains: the module, its bound transfer plan, the objective, the pretrained encoder."""

  module: nn.Module  # the encoder, with inserted modules when the strategy inserts some
  plan: transfer.TransferPlan  # bound to the encoder
  objective: objectives.Objective
  source: transfer.SourceEncoder | None  # the pretrained encoder (train.init_from), if any


def read_encoder(workdir: str) -> transfer.SourceEncoder:
  """The encoder a finished run trained (its model.json): class name and roles."""
  module, _ = runfiles.build_encoder(workdir)
  return transfer.SourceEncoder(type(module).__name__, module.roles(), bool(module.uses_mask_token))


def build_model(config, domain: pipeline.DomainSequences, overlap: dict | None, provided: tuple[str, ...] = ()) -> Components:
  """The encoder with the strategy's modules, its bound plan and the objective over the streams
  this run provides (target; source with data.source_domain; `provided` by runtime hooks)."""
  plan = transfer.prepare(config, overlap)  # names and options; fails before any work
  encoder = models.build(model_config(config, plan.model_fields), domain.num_items)
  module, plan = plan.bind(encoder)
  streams = ("target",) + (("source",) if config.data.source_domain else ()) + tuple(provided)
  objective = (objectives.Objective((), {}) if encoder.fitted else  # counted, not trained
               objectives.build(config.objective, encoder.causal, streams, type(encoder).__name__,
                                plan.strategy.terms))
  source = read_encoder(config.train.init_from) if config.train.init_from and plan.strategy.load else None
  return Components(module, plan, objective, source)


def initial_params(config, workdir, model: Components, state, param_sh, domain):
  """The load priority (xrec/train/checkpoint.py: resolve_init) applied to `state` (its
  checkpointed part): returns (state, loop meta, InitSource, transfer report or None)."""
  plan = model.plan
  init = ckpt.resolve_init(workdir, config.train)
  if jax.process_count() > 1:  # every process decides before any creates the checkpoint folders
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("xrec:resolve_init")
  meta, report = BestTracker.fresh_meta(), None
  if init.kind in ("resume_workdir", "resume_path"):
    state, meta = ckpt.restore_state(init.path, state)
    report = runfiles.read_transfer_report(init.path)  # what the first start loaded
  elif model.module.fitted:  # counted, not trained: the training users' item counts
    counts = pipeline.item_counts(domain)
    state["params"] = jax.device_put(model.module.fit_params(counts), param_sh)
    init = ckpt.InitSource("fitted")
  elif init.kind == "pretrained" and not plan.strategy.load and plan.strategy.teacher:
    init = ckpt.InitSource("scratch")  # distill: train.init_from is the teacher, the student starts fresh
  elif init.kind == "pretrained":
    if not plan.strategy.load:
      raise ValueError(f"train.init_from={init.path!r} is set but transfer.strategy="
                       f"{plan.name!r} loads nothing; pick a strategy that loads "
                       "(e.g. full_finetune) or clear train.init_from")
    pretrained, _ = ckpt.restore_best_params(init.path)
    params, report = plan.init_params(sharding.to_host(state["params"]), pretrained,
                                      runfiles.read_item_keys(init.path), domain.item_keys, model.source)
    state["params"] = jax.device_put(params, param_sh)
    if jax.process_index() == 0:  # a resumed run reports the same loading (shared params, items)
      writing.write_json_atomic(os.path.join(workdir, runfiles.TRANSFER_REPORT_FILE),
                                {k: report[k] for k in ("strategy", "loaded", "fresh", "shared", "items", "positions")})
  elif plan.strategy.load:
    raise ValueError(f"transfer.strategy={plan.name!r} starts from a pretrained model: "
                     "set train.init_from to the pretraining run's workdir")
  return state, meta, init, report


class BestTracker:
  """Validation results -> the best checkpoint (step 0 included) and early stopping."""

  def __init__(self, manager, metric: str, patience: int, meta: dict, min_step: int = 0):
    """min_step: earlier evaluations are logged but are no candidates (pruning: the model must have
    reached its final sparsity)."""
    self.manager, self.metric, self.patience, self.meta = manager, metric, patience, meta
    self.min_step = min_step

  @staticmethod
  def fresh_meta() -> dict:
    return {"best_value": None, "best_step": None, "evals_since_best": 0, "last_eval_step": None,
            "evaluations": 0}

  def update(self, step: int, result: dict, params) -> None:
    self.meta["evaluations"] = self.meta.get("evaluations", 0) + 1
    self.meta["last_eval_step"] = step
    if step < self.min_step:
      return
    value = result[self.metric]
    if self.meta["best_value"] is None or value > self.meta["best_value"]:
      self.meta.update(best_value=value, best_step=step, evals_since_best=0)
      ckpt.save_best(self.manager, step, params, {"step": step, "valid": result})
    else:
      self.meta["evals_since_best"] += 1

  @property
  def should_stop(self) -> bool:
    return bool(self.patience and self.meta["evals_since_best"] >= self.patience)


def _run_info(config, mesh, domain, module_params) -> dict:
  dev = jax.devices()[0]
  return {
      "device_kind": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
      "process_count": jax.process_count(), "mesh": dict(mesh.shape), "jax_version": jax.__version__,
      "param_count": common.param_count(module_params),
      "dataset": {"name": config.data.name, "domain": domain.name, "users": domain.num_users,
                  "items": domain.num_items, "user_fraction": config.data.user_fraction,
                  "training_users": int(len(domain.train_users)),
                  "evaluation_users": int(len(domain.eval_users)),
                  # what preprocessing did (duplicates dropped, targets repeating the last input)
                  # and the content of the files read (xrec/data/fingerprint.py)
                  "preprocess": pipeline.preprocessing(domain), "dedup": config.data.preprocess.dedup,
                  "input_files": fingerprint.fingerprint(config.data)},
  }


def _item_overlap(config, domain) -> dict | None:
  """Overlap of the target's catalogue with the pretrained model's (train.init_from), by raw key."""
  if not config.train.init_from:
    return None
  return vocab.item_overlap(runfiles.read_item_keys(config.train.init_from), domain.item_keys, domain.item_frequency)


def _sampling_probs(config, domain, vocab_size: int):
  if "sampled_softmax" not in [t for t, _ in config.objective.terms]:
    return None
  if config.objective.sampled_softmax.sampling != "popularity":
    return None
  counts = pipeline.item_counts(domain).astype(np.float64)
  probs = np.zeros(vocab_size)
  probs[: len(counts)] = counts / counts.sum()
  return jnp.asarray(probs, jnp.float32)


class DivergedError(RuntimeError):
  """Training produced a non-finite loss or gradient norm (the run stops; its checkpoints stay)."""


class Divergence:
  """Watches each step's `finite` flag (loss and gradient norm) without a sync per step: the flags
  wait on the device and `check()` (before every evaluation, checkpoint and log line, and at the
  end) reads them and raises DivergedError naming the first bad step and the last good checkpoint,
  so that no evaluation, best params or checkpoint is ever taken from a diverged state."""

  def __init__(self, workdir: str, latest_manager):
    self.workdir, self.latest, self.pending = workdir, latest_manager, []

  def add(self, step: int, stats: dict) -> None:
    self.pending.append((step, stats["finite"], stats["loss"], stats["grad_norm"]))

  def check(self) -> None:
    if not self.pending:
      return
    pending, self.pending = self.pending, []
    flags = jax.device_get([f for _, f, _, _ in pending])
    bad = [i for i, ok in enumerate(flags) if not bool(ok)]
    if not bad:
      return
    step, _, loss, grad_norm = pending[bad[0]]
    self.latest.wait_until_finished()
    saved = self.latest.all_steps()
    kept = (f"the last good checkpoint is {os.path.join(self.workdir, ckpt.LATEST_DIR, str(max(saved)))} "
            f"(step {max(saved)})" if saved else "no checkpoint was saved before it")
    raise DivergedError(
        f"training diverged: the loss ({float(jax.device_get(loss))}) or gradient norm "
        f"({float(jax.device_get(grad_norm))}) is not finite at step {step}; {kept}. Nothing after it was "
        "evaluated or saved. Rerun in a new workdir with a lower optim.lr (or a lower optim.clip_norm, a "
        "longer optim.warmup_fraction)")


# --- the recipe ----------------------------------------------------------------------------------


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs training with periodic evaluation and checkpoints; returns (and writes) results.json."""
  t_start = time.time()
  run, hooks, model = build_run(config, workdir)
  t_data = time.time()
  make_streams(run, model)
  state, state_sh, tx = start_state(run, hooks, model)
  config = run.config
  train_step = steps.make_train_step(run.module, tx, model.objective, run.domain.num_items, state_sh, run.mesh,
                                     _sampling_probs(config, run.domain, run.module.vocab_size),
                                     max(run.num_steps, 1), tuple(hooks),
                                     sharding.axis_shards(run.mesh, run.rules, "vocab"))
  outcome = fit(run, hooks, state, train_step)
  if outcome.killed:  # simulated kill: no final evaluation, no results
    return {"stopped_at_step": outcome.step}
  t_final = time.time()
  results = finish(run, hooks, model, outcome)
  results["wall_seconds"] = {"data": t_data - t_start, "train": outcome.train_seconds,
                             "final_eval": time.time() - t_final, "total": time.time() - t_start}
  if jax.process_index() == 0:
    writing.write_json_atomic(os.path.join(workdir, runfiles.RESULTS_FILE), results)
  return results


def build_run(config, workdir: str):
  """(Run, hooks, Components): the data loaded, the runtime hooks resolved and configured, the model
  built and described in the workdir (item_keys.json, model.json), the hooks' data changes made."""
  validate(config)
  if config.train.init_from:  # a folder, or a model zoo entry's name (python -m xrec.zoo list)
    config = with_overrides(config, {"train.init_from": zoo.resolve(config.train.init_from)})
  for folder in (workdir, os.path.join(workdir, ckpt.LATEST_DIR), os.path.join(workdir, ckpt.BEST_DIR)):
    runindex.check_writable(folder)
  domain = pipeline.load_domain(config.data)
  overlap = _item_overlap(config, domain)
  hooks = runtime.active(config, transfer.prepare(config, overlap).runtime)
  run = runtime.Run(config, workdir, domain, sharding.make_mesh(config.mesh),
                    sharding.logical_rules(config.sharding.rules), overlap=overlap)
  for hook in hooks:  # what the hooks size before the model exists (a teacher's width, text dims)
    run.config = with_overrides(run.config, hook.configure(run))
  config = run.config
  model = build_model(config, domain, overlap, tuple(s for h in hooks for s in h.provides))
  run.plan, run.module, run.objective = model.plan, model.module, model.objective
  if jax.process_index() == 0:
    writing.write_json_atomic(os.path.join(workdir, runfiles.ITEM_KEYS_FILE),
                              {"dataset": config.data.name, "domain": domain.name, "item_keys": domain.item_keys})
    writing.write_json_atomic(os.path.join(workdir, runfiles.MODEL_FILE),
                              {"model": model_config(config, model.plan.model_fields).to_dict(),
                               "num_items": domain.num_items, "encoder": model.plan.encoder,
                               "reverse": bool(config.data.reverse),  # trained to predict the previous item
                               "roles": model.plan.roles.as_dict()})
  if model.plan.not_applicable:
    log.warning("transfer %s: %s", model.plan.name, model.plan.not_applicable)
  for hook in hooks:  # e.g. source histories attached, synthesised items added
    hook.prepare_data(run)
  return run, hooks, model


def make_streams(run, model: Components) -> None:
  """run.streams (the objective's batch streams: the target's, and the source domain's users in the
  target's item ids when a term reads them) and run.num_steps (0: evaluate only)."""
  config, domain, module = run.config, run.domain, run.module
  max_len = config.model.max_len
  augmenter = augment.from_config(config.data.augment, module.num_items + 1 if module.uses_mask_token else 0,
                                  (domain.sequence(u)[:-2] for u in domain.train_users), domain.num_items)
  views = bool({"view_a", "view_b"} & set(model.objective.fields))
  if views and augmenter is None:
    raise ValueError(f"objective terms {model.objective.names} contrast augmented views: set data.augment.ops "
                     f"(valid: {list(augment.OPS)})")
  batches = pipeline.TrainBatches(domain, config.train.batch_size, max_len, config.seed,
                                  jax.process_index(), jax.process_count(), augmenter,
                                  config.data.augment.prob if augmenter else 0.0, views)
  run.streams = {"target": batches}
  if "source" in model.objective.streams:
    source_cfg = copy.deepcopy(config.data)
    with source_cfg.unlocked():
      source_cfg.update(dict(domain=config.data.source_domain, user_fraction=1.0, eval_population="all"))
    source = pipeline.remap(pipeline.load_domain(source_cfg), domain.item_keys)
    log.info("source stream: domain %r, %d users, %.1f%% of its interactions on the target's items",
             source.name, source.num_users, 100 * source.metadata["remap"]["interactions_kept"])
    run.streams["source"] = pipeline.TrainBatches(source, config.train.batch_size, max_len, config.seed + 7919,
                                                  jax.process_index(), jax.process_count())
  run.num_steps = total_steps(config, batches) if model.plan.train and not module.fitted else 0
  blocks = int(run.mesh.shape["data"])
  for name, stream in sorted(run.streams.items()):  # next-item terms skip the padding (objectives.predicted_positions)
    capacity = stream.pack_targets(blocks, run.num_steps)
    if capacity:
      log.info("%s batches: next-item terms on %d of the %d positions of each of %d blocks", name, capacity,
               config.train.batch_size // blocks * max_len, blocks)


def start_state(run, hooks, model: Components):
  """(state, its shardings, optimizer): created sharded, with the hooks' carried state (sharded like
  the params, checkpointed), loaded by the load priority, then each hook's after-load work and
  constants (state["frozen"], never checkpointed)."""
  config = run.config
  tx = model.plan.make_optimizer(lambda: optim.make_optimizer(config.optim, max(run.num_steps, 1))[0])
  state, state_sh = steps.create_state(run.module, tx, config.model.max_len, config.seed, run.mesh, run.rules)
  run.param_sh = state_sh["params"]
  run.evaluate = evaluation.Evaluator(run.module, run.domain.num_items, config.model.max_len, config.eval,
                                      run.mesh, run.param_sh)
  for hook in hooks:
    if hook.state_key:
      state[hook.state_key], state_sh[hook.state_key] = hook.init_state(run, state), run.param_sh
  state, run.meta, run.init, run.report = initial_params(config, run.workdir, model, state, run.param_sh, run.domain)
  for hook in hooks:
    state = hook.after_init(run, state)
  frozen = {h.name: h.frozen(run, state) for h in hooks}
  frozen = {k: v for k, v in frozen.items() if v is not None}
  if frozen:
    state[steps.FROZEN], state_sh[steps.FROZEN] = frozen, jax.tree.map(lambda x: x.sharding, frozen)
  run.budget = model.plan.budget(state["params"], run.report)
  log.info(model.plan.describe(run.budget))
  domain = run.domain
  log.info("data: %s/%s %d users (%d train, %d evaluated), %d items | model: %s, %s params | mesh %s",
           config.data.name, domain.name, domain.num_users, len(domain.train_users),
           len(domain.eval_users), domain.num_items, config.model.name,
           f"{common.param_count(state['params']):,}", dict(run.mesh.shape))
  log.info("init: %s %s (step %d of %d) | objective: %s", run.init.kind, run.init.path, int(state["step"]),
           run.num_steps, " + ".join(f"{w:g} {t.name}" for t, w in model.objective.terms))
  return state, state_sh, tx


@dataclasses.dataclass
class Outcome:
  """How the loop ended: the final state and step, and the time it took."""

  state: dict
  start_step: int
  step: int
  killed: bool
  stopped_early: bool
  best: BestTracker
  train_seconds: float
  side_seconds: float  # evaluations and checkpoints inside the loop (not training throughput)


def fit(run, hooks, state, train_step) -> Outcome:
  """The loop: steps over the streams, the hooks' work between steps, evaluation every
  train.eval_every_steps (best checkpoint, early stopping), checkpoints, divergence checks."""
  config, num_steps, workdir = run.config, run.num_steps, run.workdir
  is_main = jax.process_index() == 0
  start_step = int(state["step"])
  schedule = optim.learning_rate_schedule(config.optim, max(num_steps, 1))
  writer = writing.MetricWriter(workdir, resume_step=start_step if run.init.kind == "resume_workdir" else None,
                                enabled=is_main)
  latest = ckpt.latest_manager(workdir, config.train.keep_checkpoints)
  best = BestTracker(ckpt.best_manager(workdir), config.train.best_metric, config.train.early_stopping_patience,
                     run.meta, max([h.min_best_step(run) for h in hooks], default=0))
  base_rng = jax.random.key(config.seed + 1)
  work = frozenset().union(*(h.steps_with_work(run) for h in hooks))
  side = [0.0]

  def run_eval(step, params):
    t0 = time.time()
    result = run.evaluate(params, run.domain, "valid")
    writer.write(step, "valid", result)
    best.update(step, result, params)
    log.info("step %d valid %s=%.4f (best %s at step %s)", step, best.metric, result[best.metric],
             "-" if best.meta["best_value"] is None else f"{best.meta['best_value']:.4f}", best.meta["best_step"])
    side[0] += time.time() - t0

  t_train = time.time()
  if start_step == 0 and (config.train.eval_at_start or num_steps == 0) and best.meta["best_step"] is None:
    run_eval(0, state["params"])
  bar = writing.progress_bar(num_steps, start_step, config.train.progress_bar and is_main)
  step, killed, stopped_early = start_step, False, False
  stops = [start_step + config.train.stop_after_steps] if config.train.stop_after_steps > 0 else []
  stops += [config.train.stop_at_step] if config.train.stop_at_step > 0 else []
  stop_at = min(stops, default=None)
  t_window, window_examples = time.time(), 0
  finished = start_step >= num_steps or best.should_stop
  health = Divergence(workdir, latest)
  for step_batches in pipeline.iterate_streams(run.streams, start_step, num_steps) if not finished else ():
    state, stats = train_step(state, sharding.put_batch(step_batches, run.mesh), base_rng)
    step += 1
    health.add(step, stats)
    if step in work:
      health.check()  # no hook works on a diverged state
      for hook in hooks:
        state = hook.after_step(run, step, state)
    window_examples += config.train.batch_size
    bar.update(1)
    at_eval = step % config.train.eval_every_steps == 0 or step == num_steps
    at_log = step % config.train.log_every_steps == 0 or step == num_steps
    if at_eval or at_log or step % config.train.checkpoint_every_steps == 0:
      health.check()  # before any evaluation or checkpoint sees non-finite params
    if at_log:
      row = {k: float(v) for k, v in jax.device_get(stats).items() if k != "finite"}
      row.update(lr=float(schedule(step - 1)), examples_per_second=window_examples / max(time.time() - t_window, 1e-9))
      writer.write(step, "train", row)
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      t_window, window_examples = time.time(), 0
    if at_eval:
      run_eval(step, state["params"])
      stopped_early = best.should_stop
    if step % config.train.checkpoint_every_steps == 0 or step == num_steps or stopped_early:
      t0 = time.time()
      ckpt.save_state(latest, step, steps.checkpointed(state), dict(best.meta))
      side[0] += time.time() - t0
    if stopped_early:
      log.info("early stopping at step %d: %d evaluations without improvement", step, best.meta["evals_since_best"])
      break
    if stop_at is not None and step >= stop_at:
      killed = True
      break
  health.check()
  bar.close()
  train_seconds = time.time() - t_train
  for manager in (latest, best.manager):
    manager.wait_until_finished()
    manager.close()
  run.writer = writer
  if killed:
    writer.close()
  return Outcome(state, start_step, step, killed, stopped_early, best, train_seconds, side[0])


def finish(run, hooks, model: Components, outcome: Outcome) -> dict:
  """The results: validation and test metrics (and per-user ranks) at the best validation
  checkpoint (never the final params, unless they are best), the protocol, budget, what was
  transferred, and what each hook adds."""
  config, domain, plan, evaluate = run.config, run.domain, model.plan, run.evaluate
  best_params, best_step = ckpt.restore_best_params(run.workdir, outcome.state["params"])
  valid, valid_ranks = evaluate(best_params, domain, "valid", with_ranks=True)
  test, test_ranks = evaluate(best_params, domain, "test", with_ranks=True)
  meta, num_steps, step = outcome.best.meta, run.num_steps, outcome.step
  last_eval = meta.get("last_eval_step")
  results = {
      "config": config.to_dict(),
      "protocol": evaluation.protocol(config.eval, domain.population),
      "init": {"kind": run.init.kind, "path": run.init.path},
      "model": {"name": config.model.name, "encoder": plan.encoder,
                "objective": [[t.name, w] for t, w in model.objective.terms], "item_repr": config.model.item_repr},
      "transfer": {"strategy": plan.name, **run.budget, "items": run.report["items"] if run.report else None,
                   "item_overlap": run.overlap,
                   "item_tables": plan.item_tables, "not_applicable": plan.not_applicable or None,
                   "source_encoder": model.source.name if model.source else None},
      "best_step": int(best_step),
      "final_step": int(step),
      "stopped_early": outcome.stopped_early,
      "budget": {"num_steps": int(num_steps), "steps_run": int(step),
                 "warmup_steps": optim.warmup_steps(config.optim, max(num_steps, 1)) if num_steps else 0,
                 "eval_every_steps": int(config.train.eval_every_steps),
                 "early_stopping_patience": int(config.train.early_stopping_patience),
                 "evaluations": int(meta.get("evaluations", 0)), "last_eval_step": last_eval,
                 "stopped_early": outcome.stopped_early,
                 # the best validation was the last one: the run was still improving when stopped
                 "best_is_last_eval": bool(num_steps > 0 and last_eval is not None
                                           and int(best_step) == int(last_eval) and last_eval > 0)},
      "valid": valid,
      "test": test,
      "per_user": {"population_sha256": domain.population["keys_sha256"],
                   "valid_rank": valid_ranks.tolist(), "test_rank": test_ranks.tolist()},
      **_run_info(config, run.mesh, domain, outcome.state["params"]),
  }
  final = runtime.Final(best_params, outcome.state, valid, test)
  for hook in hooks:
    runtime.merge_results(results, hook.results(run, final))
  stepping = max(outcome.train_seconds - outcome.side_seconds, 1e-9)  # the loop without evaluations and checkpoints
  ran = step - outcome.start_step
  results["throughput"] = {
      "train_sequences_per_second": ran * config.train.batch_size / stepping if ran > 0 else None,
      "eval_users_per_second": valid["users_per_second"]}
  run.writer.write(int(best_step), "test", results["test"])
  run.writer.close()
  return results
