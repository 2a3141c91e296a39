"""train_and_evaluate(config, workdir): one stage, importable (launch.py runs stages through
xrec/train/runner.py). It is the door where the ConfigDict stops: `validate` checks it and
`xrec.config.resolve_spec` turns it into typed pieces (RunSpec); every step below takes the spec or the
piece it needs. It reads as its recipe; the strategy- and data-specific work happens in the
runtime hooks (xrec/train/hooks), which this file calls at fixed points and never names:

  door             validate the config, resolve it into a RunSpec (a zoo name becomes a folder)
  build_run        load the data, resolve the hooks, build the model (encoder + transfer plan +
                   objective), write the run's item keys and model.json, let hooks change the data
  streams          the objective's batch streams (xrec/data/streams.py) and the step budget
  start_state      the train state (xrec/train/step.py) with the hooks' carried state, the load
                   priority (checkpoint.load_initial: resume > explicit resume > pretrained > scratch;
                   fitted models count instead), the hooks' after-load work and constants
  fit              the jitted step (step.py) over the streams, periodic evaluation and checkpoints,
                   early stopping, divergence checks
  finish           the metrics at the best validation checkpoint, written to results.json
"""

from __future__ import annotations

import dataclasses
import logging
import os
import platform
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from xrec import models
from xrec import runfiles
from xrec import runindex
from xrec import sharding
from xrec import zoo
from xrec.config import RunSpec, check_ranges, model_config, resolve_spec
from xrec.data import fingerprint, pipeline, streams
from xrec.data.preprocess import DEDUP
from xrec.evaluate import evaluator as evaluation
from xrec.evaluate.metrics import SAMPLED_PREFIX, TARGET_IN_HISTORY
from xrec.models import common
from xrec.models.transformer import ATTENTION_DROPOUT, BLOCKS, POSITIONS, check_choice
from xrec.train import checkpoint as ckpt
from xrec.train import hooks as runtime
from xrec.train import objectives
from xrec.train import optimizer as optim
from xrec.train import parallel
from xrec.train import step as steps
from xrec.train import writer as writing
from xrec.transfer import apply as transfer
from xrec.transfer import prune as pruning
from xrec.transfer import strategies
from xrec.transfer import vocab

log = logging.getLogger("xrec")


def validate(config) -> None:
  """Checks names and ranges before any work; errors list the valid choices."""
  check_ranges(config)
  models.model_class(config.model.name)
  models.dtype(config.model.compute_dtype)
  own = config.model.get(config.model.name) or {}
  for field, valid in (("block", BLOCKS), ("positions", POSITIONS), ("attention_dropout", ATTENTION_DROPOUT)):
    if field in own:  # the transformers' own fields, refused here before any data is read
      check_choice(config.model.name, field, own[field], valid)
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
  encoder = models.model_class(config.model.name)
  for pair in config.objective.terms:
    if len(pair) != 2 or pair[0] not in objectives.TERMS:
      raise ValueError(f"objective.terms entry {tuple(pair)!r}: (name, weight) with a name in {sorted(objectives.TERMS)}")
    objectives.fitting_term(pair[0], encoder.causal, encoder.__name__)  # e.g. full_softmax on BERT4Rec
  prune = config.transfer.get("prune")
  if config.transfer.strategy == "prune" and prune is not None and prune.kind in ("heads", "mlp"):
    own = config.model.get(config.model.name) or {}
    units = own.get("num_heads" if prune.kind == "heads" else "mlp_dim")
    if units and int(float(prune.ratio) * int(units)) < 1:  # known from the config: before any work
      raise ValueError(f"transfer.prune.kind={prune.kind!r} at transfer.prune.ratio={prune.ratio:g} removes nothing "
                       f"from model.{config.model.name} ({int(units)} {pruning.Pruner.UNITS[prune.kind]}); use more "
                       f"of them, a higher ratio or another kind; valid kinds: {list(pruning.KINDS)}")


# --- the model ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Components:
  """What a run trains: the module, its bound transfer plan, the objective, the pretrained encoder."""

  module: nn.Module  # the encoder, with inserted modules when the strategy inserts some
  plan: transfer.TransferPlan  # bound to the encoder
  objective: objectives.Objective
  source: transfer.SourceEncoder | None  # the pretrained encoder (train.init_from), if any


THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def transparent_hugepages(path: str = THP_MODE) -> str | None:
  """The Linux kernel's transparent huge page mode ("always", "madvise", "never"); None elsewhere."""
  try:
    with open(path) as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


CPUINFO = "/proc/cpuinfo"
# the instruction-set flags XLA:CPU compiles for (vector width, fused multiply-add, matrix units)
ISA_PREFIXES = ("avx", "amx", "sse4", "fma", "f16c", "neon", "sve", "asimd")


def host(cpuinfo: str = CPUINFO) -> dict:
  """The machine a run trained on, as far as it moves the arithmetic: XLA:CPU compiles for the CPU's
  instruction set and splits work by the cores the process may use, so one config on one commit gives
  another model, bitwise at first and in its metrics after thousands of steps, on another CPU or with
  another number of cores visible when JAX started (measured in experiments/real_data/ml1m_cross_region_history.md;
  a `--jobs` worker pins itself to one core after that, so it computes as a launch does). Each run
  and record carries it, so that two such models can be told apart."""
  cpu, flags = None, []
  try:
    with open(cpuinfo) as f:
      for line in f:
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and cpu is None:
          cpu = value.strip()
        elif key in ("flags", "Features") and not flags:
          flags = value.split()
  except OSError:
    pass
  visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  # a --jobs worker pins itself to one core after JAX sized its threads by the cores it saw then
  at_start = os.environ.get(parallel.CORES_AT_START_ENV)
  pinned = os.environ.get(parallel.PIN_ENV) if at_start else None
  dev = jax.devices()[0]
  return {"platform": dev.platform, "device_kind": dev.device_kind,
          "cpu": cpu or platform.processor() or None, "isa": sorted(f for f in set(flags) if f.startswith(ISA_PREFIXES)),
          "cores": os.cpu_count(), "cores_visible": int(at_start) if at_start else visible,
          "pinned_core": int(pinned) if pinned else None,
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "jaxlib_version": getattr(jaxlib, "__version__", None)}


def host_hint(platform: str, thp_mode: str | None) -> str | None:
  """A one-line hint when the host makes XLA:CPU's steps slower than they need be, else None."""
  if platform != "cpu" or thp_mode not in ("madvise", "never"):
    return None
  return (f"host: transparent huge pages are {thp_mode!r} here; XLA:CPU maps each step's temporary buffers "
          "afresh and faults them in 4 KiB pages (experiments/bench/host_memory.py measures the cost); "
          "as root, `echo always > " + THP_MODE + "` lets them come in 2 MiB pages")


def _run_info(data_cfg, mesh, domain, module_params, roles=None) -> dict:
  dev = jax.devices()[0]
  flat = common.flatten(module_params)
  item_rows = roles.item_rows if roles is not None else ()
  return {
      "device_kind": dev.device_kind, "platform": dev.platform, "num_devices": jax.device_count(),
      "process_count": jax.process_count(), "mesh": dict(mesh.shape), "jax_version": jax.__version__,
      "transparent_hugepages": transparent_hugepages(), "host": host(),
      "param_count": common.param_count(module_params),
      # of those, the params with one row per item (item table, output table, output bias): a
      # size measured with and without the catalogue (the scaling study counts both)
      "item_param_count": int(sum(np.prod(v.shape) for p, v in flat.items() if p in item_rows)),
      "dataset": {"name": data_cfg.name, "domain": domain.name, "users": domain.num_users,
                  "items": domain.num_items, "user_fraction": data_cfg.user_fraction,
                  "training_users": int(len(domain.train_users)),
                  # the interactions of the training users' training parts (valid / test items excluded)
                  "training_interactions": domain.training_interactions(),
                  "evaluation_users": int(len(domain.eval_users)),
                  # what preprocessing did (duplicates dropped, targets repeating the last input)
                  # and the content of the files read (xrec/data/fingerprint.py)
                  "preprocess": pipeline.preprocessing(domain), "dedup": data_cfg.preprocess.dedup,
                  "input_files": fingerprint.fingerprint(data_cfg)},
  }


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
  spec = door(config)
  run, hooks, model = build_run(spec, workdir)
  t_data = time.time()
  spec, objective, module = run.spec, model.objective, run.module  # after the hooks' configure
  run.streams = streams.train_streams(run.domain, spec.data, spec.train.batch_size, spec.model.max_len, spec.seed,
                                      mask_id=module.num_items + 1 if module.uses_mask_token else 0,
                                      views=tuple(objective.names) if {"view_a", "view_b"} & set(objective.fields)
                                      else (),
                                      source=tuple(t.name for t, _ in objective.terms if "source" in t.streams))
  target = run.streams["target"]
  run.num_steps = (spec.train.total_steps(target.steps_per_epoch, len(target.users))
                   if model.plan.train and not module.fitted else 0)  # 0: evaluate only
  pipeline.pack_streams(run.streams, int(run.mesh.shape["data"]), run.num_steps)
  if "sampled_softmax" in objective.names and spec.objective.sampled_softmax.sampling == "popularity":
    run.item_probs = jnp.asarray(pipeline.popularity(run.domain, module.vocab_size))
  state, state_sh, tx = start_state(run, hooks, model)
  outcome = fit(run, hooks, model, state, state_sh, tx)
  if outcome.killed:  # simulated kill: no final evaluation, no results
    return {"stopped_at_step": outcome.step}
  t_final = time.time()
  results = finish(run, hooks, model, outcome)
  results["wall_seconds"] = {"data": t_data - t_start, "train": outcome.train_seconds,
                             "final_eval": time.time() - t_final, "total": time.time() - t_start}
  if jax.process_index() == 0:
    writing.write_json_atomic(os.path.join(workdir, runfiles.RESULTS_FILE), results)
  return results


def door(config) -> RunSpec:
  """Where the ConfigDict stops: checked (`validate`), then resolved into the run's typed pieces
  (xrec/config.py: RunSpec), with a model zoo entry's name in train.init_from made its folder."""
  validate(config)
  spec = resolve_spec(config)
  if spec.train.init_from:  # a folder, or a model zoo entry's name (python -m xrec.zoo list)
    spec = spec.replace({"train.init_from": zoo.resolve(spec.train.init_from)})
  return spec


def build_run(spec: RunSpec, workdir: str):
  """(Run, hooks, Components): the data loaded, the runtime hooks resolved and configured, the model
  built and described in the workdir (item_keys.json, model.json), the hooks' data changes made."""
  for folder in (workdir, os.path.join(workdir, ckpt.LATEST_DIR), os.path.join(workdir, ckpt.BEST_DIR)):
    runindex.check_writable(folder)
  domain = pipeline.load_domain(spec.data)
  init_from = spec.train.init_from  # overlap of the target's catalogue with the pretrained model's, by raw key
  overlap = (vocab.item_overlap(runfiles.read_item_keys(init_from), domain.item_keys, domain.item_frequency)
             if init_from else None)
  hooks = runtime.active(spec, transfer.prepare(spec.transfer, overlap).runtime)
  run = runtime.Run(spec, workdir, domain, sharding.make_mesh(spec.mesh), sharding.logical_rules(spec.rules),
                    overlap=overlap)
  for hook in hooks:  # what the hooks size before the model exists (a teacher's width, text dims)
    run.spec = run.spec.replace(hook.configure(run))
  spec = run.spec
  # the encoder with the strategy's modules, its bound plan, and the objective over the streams this
  # run provides (target; source with data.source_domain; those the hooks provide)
  plan = transfer.prepare(spec.transfer, overlap)
  model_cfg = model_config(spec.model, plan.model_fields)  # with the strategy's fields (e.g. untied for linear_probe)
  encoder = models.build(model_cfg, domain.num_items)
  module, plan = plan.bind(encoder)
  provided = ("target",) + (("source",) if spec.data.source_domain else ()) + tuple(s for h in hooks for s in h.provides)
  objective = (objectives.Objective((), {}) if encoder.fitted else  # counted, not trained
               objectives.assemble(spec.objective, encoder.causal, provided, type(encoder).__name__,
                                   plan.strategy.terms))
  source = None
  if spec.train.init_from and plan.strategy.load:  # the encoder the pretraining run trained (model.json)
    pretrained, _ = runfiles.build_encoder(spec.train.init_from)
    source = transfer.SourceEncoder(type(pretrained).__name__, pretrained.roles(), bool(pretrained.uses_mask_token))
  model = Components(module, plan, objective, source)
  run.plan, run.module, run.objective = plan, module, objective
  if jax.process_index() == 0:
    writing.write_json_atomic(os.path.join(workdir, runfiles.ITEM_KEYS_FILE),
                              {"dataset": spec.data.name, "domain": domain.name, "item_keys": domain.item_keys})
    writing.write_json_atomic(os.path.join(workdir, runfiles.MODEL_FILE),
                              {"model": model_cfg.to_dict(),
                               "num_items": domain.num_items, "encoder": model.plan.encoder,
                               "reverse": bool(spec.data.reverse),  # trained to predict the previous item
                               "roles": model.plan.roles.as_dict()})
  if model.plan.not_applicable:
    log.warning("transfer %s: %s", model.plan.name, model.plan.not_applicable)
  for hook in hooks:  # e.g. source histories attached, synthesised items added
    hook.prepare_data(run)
  return run, hooks, model


def start_state(run, hooks, model: Components):
  """(state, its shardings, optimizer): created sharded, with the hooks' carried state (sharded like
  the params, checkpointed), loaded by the load priority, then each hook's after-load work and
  constants (state["frozen"], never checkpointed)."""
  spec = run.spec
  tx = optim.runtime(spec.optim, max(run.num_steps, 1), model.plan.make_optimizer)
  state, state_sh = steps.create_state(run.module, tx.tx, spec.model.max_len, spec.seed, run.mesh, run.rules)
  run.param_sh = state_sh["params"]
  run.evaluate = evaluation.Evaluator(run.module, run.domain.num_items, spec.model.max_len, spec.eval,
                                      run.mesh, run.param_sh)
  for hook in hooks:
    if hook.state_key:
      state[hook.state_key], state_sh[hook.state_key] = hook.init_state(run, state), run.param_sh
  state, run.meta, run.init, run.report = ckpt.load_initial(spec.train, run.workdir, model.plan, model.module,
                                                             model.source, state, run.param_sh, run.domain)
  for hook in hooks:
    state = hook.after_init(run, state)
  frozen = {h.name: h.frozen(run, state) for h in hooks}
  frozen = {k: v for k, v in frozen.items() if v is not None}
  if frozen:
    state[steps.FROZEN], state_sh[steps.FROZEN] = frozen, jax.tree.map(lambda x: x.sharding, frozen)
  run.budget = model.plan.budget(state["params"], run.report)
  log.info(model.plan.budget_summary(run.budget))
  domain = run.domain
  log.info("data: %s/%s %d users (%d train, %d evaluated), %d items | model: %s, %s params | mesh %s",
           spec.data.name, domain.name, domain.num_users, len(domain.train_users),
           len(domain.eval_users), domain.num_items, spec.model.name,
           f"{common.param_count(state['params']):,}", dict(run.mesh.shape))
  hint = host_hint(jax.devices()[0].platform, transparent_hugepages())
  if hint:
    log.info(hint)
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
  best: ckpt.BestTracker
  train_seconds: float
  side_seconds: float  # evaluations and checkpoints inside the loop (not training throughput)


def fit(run, hooks, model: Components, state, state_sh, tx) -> Outcome:
  """The loop: the jitted step (xrec/train/step.py) over the streams, the hooks' work between
  steps, evaluation every train.eval_every_steps and at train.eval_at_steps (best checkpoint, early
  stopping), checkpoints,
  divergence checks."""
  train, num_steps, workdir = run.spec.train, run.num_steps, run.workdir
  is_main = jax.process_index() == 0
  start_step = int(state["step"])
  schedule = jax.jit(optim.learning_rate_schedule(run.spec.optim, max(num_steps, 1)))  # logged: one program
  writer = writing.MetricWriter(workdir, resume_step=start_step if run.init.kind == "resume_workdir" else None,
                                enabled=is_main)
  latest = ckpt.latest_manager(workdir, train.keep_checkpoints)
  best = ckpt.BestTracker(ckpt.best_manager(workdir), train.best_metric, train.early_stopping_patience,
                     run.meta, max([h.min_best_step(run) for h in hooks], default=0))
  base_rng = jax.random.key(run.spec.seed + 1)
  work = frozenset().union(*(h.steps_with_work(run) for h in hooks))
  side = [0.0]

  def run_eval(step, params):
    t0 = time.time()
    result = run.evaluate(params, run.domain, "valid")
    writer.write(step, "valid", result)
    best.update(step, result, params, counts=step % train.eval_every_steps == 0 or step == num_steps)
    log.info("step %d valid %s=%.4f (best %s at step %s)", step, best.metric, result[best.metric],
             "-" if best.meta["best_value"] is None else f"{best.meta['best_value']:.4f}", best.meta["best_step"])
    side[0] += time.time() - t0

  t_train = time.time()
  if start_step == 0 and (train.eval_at_start or num_steps == 0) and best.meta["best_step"] is None:
    run_eval(0, state["params"])
  bar = writing.progress_bar(num_steps, start_step, train.progress_bar and is_main)
  step, killed, stopped_early = start_step, False, False
  stop_at = train.stop_at(start_step)
  t_window, window_examples = time.time(), 0
  finished = start_step >= num_steps or best.should_stop
  health = Divergence(workdir, latest)
  train_step = steps.make_train_step(run.module, tx, model.objective, run.domain.num_items, state_sh, run.mesh,
                                     run.item_probs, max(num_steps, 1), tuple(hooks),
                                     sharding.axis_shards(run.mesh, run.rules, "vocab"))
  for step_batches in pipeline.iterate_streams(run.streams, start_step, num_steps) if not finished else ():
    state, stats = train_step(state, sharding.put_batch(step_batches, run.mesh), base_rng)
    step += 1
    health.add(step, stats)
    if step in work:
      health.check()  # no hook works on a diverged state
      for hook in hooks:
        state = hook.after_step(run, step, state)
    window_examples += train.batch_size
    bar.update(1)
    at_eval, at_log, at_checkpoint = train.at(step, num_steps)
    if at_eval or at_log or at_checkpoint:
      health.check()  # before any evaluation or checkpoint sees non-finite params
    if at_log:
      row = {k: float(v) for k, v in jax.device_get(stats).items() if k != "finite"}
      row["lr"] = float(schedule(step - 1))
      row["examples_per_second"] = window_examples / max(time.time() - t_window, 1e-9)
      writer.write(step, "train", row)
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      t_window, window_examples = time.time(), 0
    if at_eval:
      run_eval(step, state["params"])
      stopped_early = best.should_stop
    if at_checkpoint or stopped_early:
      t0 = time.time()
      ckpt.save_state(latest, step, steps.checkpointed(state), dict(best.meta))
      side[0] += time.time() - t0
    if stopped_early:
      log.info("early stopping at step %d: %d evaluations without improvement%s", step, best.meta["evals_since_best"],
             f" (every {train.eval_every_steps} steps)" if train.eval_at_steps else "")
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
  spec, domain, plan, evaluate = run.spec, run.domain, model.plan, run.evaluate
  best_params, best_step = ckpt.restore_best_params(run.workdir, outcome.state["params"])
  valid, valid_ranks = evaluate(best_params, domain, "valid", with_ranks=True)
  test, test_ranks = evaluate(best_params, domain, "test", with_ranks=True)
  meta, num_steps, step = outcome.best.meta, run.num_steps, outcome.step
  last_eval = meta.get("last_eval_step")
  warmup = optim.warmup_steps(spec.optim, max(num_steps, 1)) if num_steps else 0
  run.writer.write(int(best_step), "test", test)
  run.writer.close()
  results = {
      "config": spec.recorded,
      "protocol": evaluation.protocol(spec.eval, domain.population),
      "init": {"kind": run.init.kind, "path": run.init.path},
      "model": {"name": spec.model.name, "encoder": plan.encoder,
                "objective": [[t.name, w] for t, w in model.objective.terms], "item_repr": spec.model.item_repr},
      "transfer": {"strategy": plan.name, **run.budget, "items": run.report["items"] if run.report else None,
                   "item_overlap": run.overlap,
                   "item_tables": plan.item_tables, "not_applicable": plan.not_applicable or None,
                   "source_encoder": model.source.name if model.source else None},
      "best_step": int(best_step),
      "final_step": int(step),
      "stopped_early": outcome.stopped_early,
      "budget": {"num_steps": int(num_steps), "steps_run": int(step),
                 "warmup_steps": warmup,
                 "eval_every_steps": spec.train.eval_every_steps,
                 "eval_at_steps": list(spec.train.eval_at_steps),
                 "early_stopping_patience": spec.train.early_stopping_patience,
                 "evaluations": int(meta.get("evaluations", 0)), "last_eval_step": last_eval,
                 "stopped_early": outcome.stopped_early,
                 # the best validation was the last one: the run was still improving when stopped
                 "best_is_last_eval": bool(num_steps > 0 and last_eval is not None
                                           and int(best_step) == int(last_eval) and last_eval > 0)},
      "valid": valid,
      "test": test,
      "per_user": {"population_sha256": domain.population["keys_sha256"],
                   "valid_rank": valid_ranks.tolist(), "test_rank": test_ranks.tolist()},
      **_run_info(spec.data, run.mesh, domain, outcome.state["params"], plan.roles),
  }
  final = runtime.Final(best_params, outcome.state, valid, test)
  for hook in hooks:
    runtime.merge_results(results, hook.results(run, final))
  stepping = max(outcome.train_seconds - outcome.side_seconds, 1e-9)  # the loop without evaluations and checkpoints
  ran = step - outcome.start_step
  results["throughput"] = {
      "train_sequences_per_second": ran * spec.train.batch_size / stepping if ran > 0 else None,
      "eval_users_per_second": valid["users_per_second"]}
  return results
