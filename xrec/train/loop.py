"""train_and_evaluate(config, workdir): one stage, importable (launch.py runs stages through
xrec/train/sweep.py). Split into its parts:

  build_model      data-independent pieces: the encoder (any model of xrec/models), the transfer
                   plan bound to it (inserted modules, what loads and trains), the objective
  create_state     params and optimizer state created already sharded
  initial_params   the load priority (resume > explicit resume > pretrained > scratch; fitted
                   models count instead)
  BestTracker      validation -> best checkpoint, early stopping
  train_and_evaluate  the loop: steps, periodic evaluation and checkpoints, then the final
                   metrics at the best validation checkpoint, written to results.json
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
import ml_collections
import numpy as np
import optax

from xrec import models
from xrec import runfiles
from xrec import runindex
from xrec import sharding
from xrec import zoo
from xrec.config import MAX_COUNT, check_ranges, with_overrides
from xrec.data import augment, cross_user, fingerprint, pipeline
from xrec.data.preprocess import DEDUP
from xrec.evaluate import evaluator as evaluation
from xrec.evaluate.metrics import SAMPLED_PREFIX, TARGET_IN_HISTORY
from xrec.models import common
from xrec.train import checkpoint as ckpt
from xrec.train import item_text
from xrec.train import objectives
from xrec.train import optimizer as optim
from xrec.train import synthesis
from xrec.train import writer as writing
from xrec.transfer import apply as transfer
from xrec.transfer import prune as pruning
from xrec.transfer import schedule as schedules
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
class Model:
  module: nn.Module  # the encoder, with inserted modules when the strategy inserts some
  plan: transfer.TransferPlan  # bound to the encoder
  objective: objectives.Objective
  source: transfer.SourceEncoder | None  # the pretrained encoder (train.init_from), if any
  teacher: dict | None = None  # distillation: {"path", "module", "params", "id_map", "info"}
  item_text: np.ndarray | None = None  # text items: [num_items + 1, dim] text embeddings of the catalogue


def model_config(config, fields: dict) -> ml_collections.ConfigDict:
  """config.model with `fields` (a strategy's model fields) set."""
  cfg = copy.deepcopy(config.model)
  with cfg.unlocked():
    cfg.update(fields)
  return cfg


def read_encoder(workdir: str) -> transfer.SourceEncoder:
  """The encoder a finished run trained (its model.json): class name and roles."""
  module, _ = runfiles.build_encoder(workdir)
  return transfer.SourceEncoder(type(module).__name__, module.roles(), bool(module.uses_mask_token))


def build_model(config, domain: pipeline.DomainSequences, overlap: dict | None,
                item_text_table: np.ndarray | None = None) -> Model:
  teacher = None
  if config.transfer.strategy == "distill":  # the teacher's width sizes the student's projection head
    teacher = read_teacher(config, domain)
    config = with_overrides(config, {"transfer.distill.teacher_embed_dim": teacher["embed_dim"]})
  if config.transfer.strategy == "cross_user":  # the sizes of what the source history is read through
    config = with_overrides(config, cross_user_sizes(config, domain))
  plan = transfer.prepare(config, overlap)  # names and options; fails before any work
  encoder = models.build(model_config(config, plan.model_fields), domain.num_items)
  module, plan = plan.bind(encoder)
  streams = ("target",) + (("source",) if config.data.source_domain else ()) + (("teacher",) if teacher else ())
  objective = (objectives.Objective((), {}) if encoder.fitted else  # counted, not trained
               objectives.build(config.objective, encoder.causal, streams, type(encoder).__name__,
                                plan.strategy.terms))
  source = read_encoder(config.train.init_from) if config.train.init_from and plan.strategy.load else None
  return Model(module, plan, objective, source, teacher, item_text_table)


def cross_user_sizes(config, domain) -> dict:
  """transfer.cross_user.rows / source_dim: the pretrained model's vocab (merged: source items are
  read through a copy of its item table) or the target's users + 1 (prefix: one frozen
  representation per user), and the pretrained encoder's width."""
  if not config.data.source_domain or not config.train.init_from:
    raise ValueError("transfer.strategy='cross_user' reads each user's source-domain history through the "
                     "pretrained source model: it needs data.source_domain and train.init_from (a "
                     "pretrain -> transfer experiment sets both)")
  module, info = runfiles.build_encoder(config.train.init_from)
  rows = module.vocab_size if config.transfer.cross_user.mode == "merged" else 2 * domain.num_users + 1
  return {"transfer.cross_user.rows": int(rows), "transfer.cross_user.source_dim": int(info["model"]["embed_dim"])}


def cross_user_inputs(config, domain, vocab_size: int):
  """The target domain with its users' source histories attached (xrec/data/cross_user.py)."""
  source_cfg = copy.deepcopy(config.data)
  with source_cfg.unlocked():
    source_cfg.update(dict(domain=config.data.source_domain, user_fraction=1.0, eval_population="all"))
  source = pipeline.load_domain(source_cfg)
  pretrained_keys = runfiles.read_item_keys(config.train.init_from)
  if pretrained_keys != source.item_keys:
    raise ValueError(f"transfer.strategy='cross_user': the pretrained model {config.train.init_from!r} was not "
                     f"trained on domain {source.name!r}'s items (its item vocabulary differs), so it cannot "
                     "read that domain's histories; pretrain on data.source_domain")
  cross = cross_user.CrossUserInputs(domain, source, config.transfer.cross_user.mode, vocab_size,
                                     config.model.max_len)
  log.info("cross_user (%s): %d of %d target users have a source history in %r (%.1f%%)", cross.mode,
           cross.report["users_with_source_history"], domain.num_users, source.name,
           100 * cross.report["user_overlap"])
  return dataclasses.replace(domain, cross=cross)


def prefix_user_table(config, domain, rows: int) -> np.ndarray:
  """[rows, source embed] the frozen prefix representations: the pretrained source encoder's last
  state over each target user's source history, one row for its training window and one for its
  evaluation (CrossUserInputs.prefix_row; zero without history)."""
  module, info = runfiles.build_encoder(config.train.init_from)
  params, _ = ckpt.restore_best_params(config.train.init_from)
  max_len = int(info["model"]["max_len"])
  table = np.zeros((rows, int(info["model"]["embed_dim"])), np.float32)
  cross = domain.cross
  wanted = [(cross.prefix_row(u, kind), cross.prefix_history(u, kind))
            for u in range(domain.num_users) for kind in ("train", "eval")]
  wanted = [(row, history) for row, history in wanted if len(history)]
  encode = jax.jit(lambda p, x: module.apply({"params": p}, x, method="encode")[:, -1].astype(jnp.float32))
  for start in range(0, len(wanted), 256):
    chunk = wanted[start:start + 256]
    x = np.stack([pipeline.right_align(history, max_len) for _, history in chunk])
    pad = 256 - len(chunk)  # one shape, one compilation
    x = np.concatenate([x, np.zeros((pad, max_len), np.int32)]) if pad else x
    table[np.asarray([row for row, _ in chunk])] = np.asarray(encode(params, x))[:len(chunk)]
  return table


def synthesise(config, domain):
  """(domain with data.synthesis's pseudo-interactions, report): the generator is a finished run."""
  cfg = config.data.synthesis
  synthesis.check(cfg)
  if domain.cross is not None:
    raise ValueError("data.synthesis does not combine with transfer.strategy='cross_user' (its inputs read "
                     "the real source history); set data.synthesis.num_items=0")
  path = cfg.model or config.train.init_from
  if not path:
    raise ValueError("data.synthesis.num_items > 0 needs a generator: set data.synthesis.model (a finished "
                     "run's workdir; backward: one trained with data.reverse=True) or train.init_from")
  if not ckpt.has_best_params(path):
    raise FileNotFoundError(f"data.synthesis generator {path!r} has no best params under {os.path.join(path, 'best')}")
  module, info = runfiles.build_encoder(path)
  reversed_run = bool(info.get("reverse", False))
  if (cfg.direction == "backward") != reversed_run:
    raise ValueError(f"data.synthesis.direction={cfg.direction!r} needs a generator trained "
                     f"{'on time-reversed sequences (data.reverse=True)' if cfg.direction == 'backward' else 'forwards'}; "
                     f"{path!r} was trained {'backwards' if reversed_run else 'forwards'}: use direction="
                     f"{'backward' if reversed_run else 'forward'!r} or another generator")
  params, _ = ckpt.restore_best_params(path)
  pseudo, report = synthesis.generate(module, params, runfiles.read_item_keys(path), domain, cfg)
  report["model"] = path
  log.info("synthesis (%s): %d of %d short training users lengthened, %d items added", cfg.direction,
           report["users_lengthened"], report["short_users"], report["items_added"])
  return dataclasses.replace(domain, pseudo=pseudo), report


def read_teacher(config, domain) -> dict:
  """The distillation teacher: a finished run (transfer.distill.teacher, else train.init_from), its
  encoder, best params and the map from the student's item ids to the teacher's, by raw key."""
  path = config.transfer.distill.teacher or config.train.init_from
  if not path:
    raise ValueError("transfer.strategy='distill' needs a teacher: set transfer.distill.teacher (a finished "
                     "run's workdir) or train.init_from")
  if not ckpt.has_best_params(path):
    raise FileNotFoundError(f"distillation teacher {path!r} has no best params under {os.path.join(path, 'best')}")
  module, info = runfiles.build_encoder(path)
  teacher_keys = runfiles.read_item_keys(path)
  position = {key: i + 1 for i, key in enumerate(teacher_keys)}
  missing = [k for k in domain.item_keys if k not in position]
  if missing:
    raise ValueError(f"the distillation teacher {path!r} was trained on another item vocabulary: {len(missing)} of "
                     f"the target's {domain.num_items} items are not in it (e.g. {missing[:3]}); distill from a "
                     "teacher that knows the target's items (e.g. a fine-tuned target run)")
  id_map = np.zeros(models.build(config.model, domain.num_items).vocab_size, np.int32)
  id_map[1:domain.num_items + 1] = [position[k] for k in domain.item_keys]
  params, _ = ckpt.restore_best_params(path)
  results = runfiles.read_results(path, missing_ok=True) or {}
  described = {"path": path, "encoder": type(module).__name__, "param_count": common.param_count(params),
               "stored_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(params))),
               "test": (results.get("test") or {}).get("ndcg@10"),
               "eval_users_per_second": (results.get("throughput") or {}).get("eval_users_per_second")}
  return {"module": module, "params": params, "id_map": id_map, "info": described,
          "embed_dim": int(info["model"].get("embed_dim", 0))}


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
  opt_sh = schedules.opt_state_shardings(tx, abstract["opt_state"], param_sh, sharding.replicated(mesh))
  state_sh = {"step": sharding.replicated(mesh), "params": param_sh, "opt_state": opt_sh}
  state = jax.jit(init_state, out_shardings=state_sh)(rng)
  return state, state_sh


def make_train_step(module, tx, objective: objectives.Objective, num_items: int, state_sh, mesh,
                    sampling_probs=None, num_steps: int = 1, teacher: dict | None = None, vocab_shards: int = 1):
  """One jitted step over the streams' batches: the objective's weighted terms, one update.
  With a distillation teacher the step takes its params as a fourth (non-donated) argument.
  vocab_shards: the devices the item table is split over (sharding.axis_shards), for terms that
  lay out their work per shard (chunked_softmax)."""

  def step(state, batches, base_rng, teacher_params=None):
    rng = jax.random.fold_in(base_rng, state["step"])
    progress = state["step"].astype(jnp.float32) / max(num_steps, 1)
    frozen = (objectives.Teacher(teacher["module"], teacher_params, jnp.asarray(teacher["id_map"]))
              if teacher else None)

    def total(params):
      return objective.loss(module, params, batches, rng, num_items, sampling_probs, progress, frozen,
                            vocab_shards)

    (loss, parts), grads = jax.value_and_grad(total, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    if "masks" in state:  # pruning: pruned entries stay exactly zero
      params = jax.tree.map(lambda p, m: p * m.astype(p.dtype), params, state["masks"])
    new_state = {**state, "step": state["step"] + 1, "params": params, "opt_state": opt_state}
    # each term's loss as loss/<term>, the values terms report as <term>/<name>
    grad_norm = optax.tree.norm(grads)
    stats = {"loss": loss, "grad_norm": grad_norm,
             **{(k if "/" in k else f"loss/{k}"): v for k, v in parts.items()}}
    return new_state, {**stats, "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm)}

  jitted = jax.jit(step, in_shardings=(state_sh, sharding.batch_sharding(mesh), None, None),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
  teacher_params = jax.device_put(teacher["params"], sharding.replicated(mesh)) if teacher else None
  return TrainStep(jitted, teacher_params)


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """`step(state, batches, base_rng) -> (state, stats)`; `lower(...)` for cost analysis."""

  jitted: object
  teacher_params: object = None

  def __call__(self, state, batches, base_rng):
    return self.jitted(state, batches, base_rng, self.teacher_params)

  def lower(self, state, batches, base_rng):
    return self.jitted.lower(state, batches, base_rng, self.teacher_params)


def initial_params(config, workdir, model: Model, state, param_sh, domain):
  """The load priority (xrec/train/checkpoint.py: resolve_init) applied to `state`: returns
  (state, loop meta, InitSource, transfer report or None)."""
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
  if model.item_text is not None:  # the current catalogue's item text embeddings (never trained nor loaded)
    state["params"] = jax.device_put(set_item_text(sharding.to_host(state["params"]), plan.roles, model.item_text),
                                     param_sh)
  return state, meta, init, report


def set_item_text(params, roles, table: np.ndarray):
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


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs training with periodic evaluation and checkpoints; returns (and writes) results.json."""
  t_start = time.time()
  validate(config)
  if config.train.init_from:  # a folder, or a model zoo entry's name (python -m xrec.zoo list)
    config = with_overrides(config, {"train.init_from": zoo.resolve(config.train.init_from)})
  for folder in (workdir, os.path.join(workdir, ckpt.LATEST_DIR), os.path.join(workdir, ckpt.BEST_DIR)):
    runindex.check_writable(folder)
  mesh = sharding.make_mesh(config.mesh)
  rules = sharding.logical_rules(config.sharding.rules)
  max_len = config.model.max_len
  is_main = jax.process_index() == 0

  domain = pipeline.load_domain(config.data)
  t_data = time.time()
  overlap = _item_overlap(config, domain)
  text_table, text_info = None, None
  if config.model.item_repr != "id":  # items by their text: embedded once per (encoder, texts), cached
    models.check_item_repr(config.model)  # an encoder or option that cannot take text fails before embedding
    text_table, text_info = item_text.item_text_table(config, domain, progress=config.train.progress_bar and is_main)
    if config.model.text.dim not in (0, text_table.shape[1]):
      raise ValueError(f"model.text.dim={config.model.text.dim} but the text encoder {text_info['encoder']!r} "
                       f"gives {text_table.shape[1]}-d vectors; leave model.text.dim=0")
    config = with_overrides(config, {"model.text.dim": int(text_table.shape[1])})
    log.info("item text: %d items, %d without text (%s), %s (%s)", text_info["items"],
             text_info["text"]["without_text"], text_info["text"]["missing_policy"], text_info["encoder"],
             "cached" if text_info["reused"] else f"embedded in {text_info['seconds']:.1f}s")
  model = build_model(config, domain, overlap, text_table)
  module, plan = model.module, model.plan
  if is_main:
    writing.write_json_atomic(os.path.join(workdir, runfiles.ITEM_KEYS_FILE),
                              {"dataset": config.data.name, "domain": domain.name, "item_keys": domain.item_keys})
    writing.write_json_atomic(os.path.join(workdir, runfiles.MODEL_FILE),
                              {"model": model_config(config, plan.model_fields).to_dict(),
                               "num_items": domain.num_items, "encoder": plan.encoder,
                               "reverse": bool(config.data.reverse),  # trained to predict the previous item
                               "roles": plan.roles.as_dict()})
  if plan.not_applicable:
    log.warning("transfer %s: %s", plan.name, plan.not_applicable)
  if plan.name == "cross_user":  # inputs that also read each user's source history
    domain = cross_user_inputs(config, domain, module.vocab_size)
  synthesised = None
  if config.data.synthesis.num_items > 0:  # pseudo-interactions lengthen short training parts
    domain, synthesised = synthesise(config, domain)

  augmenter = augment.from_config(config.data.augment, module.num_items + 1 if module.uses_mask_token else 0,
                                  (domain.sequence(u)[:-2] for u in domain.train_users), domain.num_items)
  views = bool({"view_a", "view_b"} & set(model.objective.fields))
  if views and augmenter is None:
    raise ValueError(f"objective terms {model.objective.names} contrast augmented views: set data.augment.ops "
                     f"(valid: {list(augment.OPS)})")
  batches = pipeline.TrainBatches(domain, config.train.batch_size, max_len, config.seed,
                                  jax.process_index(), jax.process_count(), augmenter,
                                  config.data.augment.prob if augmenter else 0.0, views)
  streams, source = {"target": batches}, None
  if "source" in model.objective.streams:  # the source domain's users, in the target's item ids
    source_cfg = copy.deepcopy(config.data)
    with source_cfg.unlocked():
      source_cfg.update(dict(domain=config.data.source_domain, user_fraction=1.0, eval_population="all"))
    source = pipeline.remap(pipeline.load_domain(source_cfg), domain.item_keys)
    log.info("source stream: domain %r, %d users, %.1f%% of its interactions on the target's items",
             source.name, source.num_users, 100 * source.metadata["remap"]["interactions_kept"])
    streams["source"] = pipeline.TrainBatches(source, config.train.batch_size, max_len, config.seed + 7919,
                                              jax.process_index(), jax.process_count())
  trains = plan.train and not module.fitted
  num_steps = total_steps(config, batches) if trains else 0  # zero_shot / fitted: evaluate only
  for name, stream in sorted(streams.items()):  # next-item terms skip the padding (objectives.predicted_positions)
    capacity = stream.pack_targets(int(mesh.shape["data"]), num_steps)
    if capacity:
      log.info("%s batches: next-item terms on %d of the %d positions of each of %d blocks", name, capacity,
               config.train.batch_size // int(mesh.shape["data"]) * max_len, int(mesh.shape["data"]))
  schedule = optim.learning_rate_schedule(config.optim, max(num_steps, 1))
  tx = plan.make_optimizer(lambda: optim.make_optimizer(config.optim, max(num_steps, 1))[0])
  state, state_sh = create_state(module, tx, max_len, config.seed, mesh, rules)
  param_sh = state_sh["params"]
  pruner, prune_events = None, {}
  if plan.strategy.prune:  # masks (1 = kept) live in the train state and its checkpoints
    kind, ratio, events, start, end = plan.strategy.prune
    pruner = pruning.Pruner(kind, plan.roles, pipeline.item_counts(domain) if kind == "items" else None)
    prune_events = dict(pruning.schedule(ratio, events, max(num_steps, 1), start, end))
    state["masks"] = jax.jit(lambda p: jax.tree.map(jnp.ones_like, p), out_shardings=param_sh)(state["params"])
    state_sh = {**state_sh, "masks": param_sh}
  state, meta, init, report = initial_params(config, workdir, model, state, param_sh, domain)
  if plan.name == "cross_user" and config.transfer.cross_user.mode == "prefix" and init.kind == "pretrained":
    params = sharding.to_host(state["params"])
    params["cross"]["user_table"] = prefix_user_table(config, domain, params["cross"]["user_table"].shape[0])
    state["params"] = jax.device_put(params, param_sh)
  budget = plan.budget(state["params"], report)
  log.info(plan.describe(budget))
  start_step = int(state["step"])
  log.info("data: %s/%s %d users (%d train, %d evaluated), %d items | model: %s, %s params | mesh %s",
           config.data.name, domain.name, domain.num_users, len(domain.train_users),
           len(domain.eval_users), domain.num_items, config.model.name,
           f"{common.param_count(state['params']):,}", dict(mesh.shape))
  log.info("init: %s %s (step %d of %d) | objective: %s", init.kind, init.path, start_step, num_steps,
           " + ".join(f"{w:g} {t.name}" for t, w in model.objective.terms))

  sampling_probs = _sampling_probs(config, domain, module.vocab_size)
  train_step = make_train_step(module, tx, model.objective, domain.num_items, state_sh, mesh, sampling_probs,
                               max(num_steps, 1), model.teacher, sharding.axis_shards(mesh, rules, "vocab"))
  evaluate = evaluation.Evaluator(module, domain.num_items, max_len, config.eval, mesh, param_sh)
  if pruner is not None and pruner.kind == "items":  # pruned items are no longer recommended
    evaluate.candidates = pruning.served_items(sharding.to_host(state["masks"]), plan.roles)

  writer = writing.MetricWriter(workdir, resume_step=start_step if init.kind == "resume_workdir" else None,
                                enabled=is_main)
  latest = ckpt.latest_manager(workdir, config.train.keep_checkpoints)
  best = BestTracker(ckpt.best_manager(workdir), config.train.best_metric,
                     config.train.early_stopping_patience, meta, max(prune_events, default=0))
  base_rng = jax.random.key(config.seed + 1)

  side_seconds = [0.0]  # evaluation and checkpoint time inside the loop (not training throughput)

  def run_eval(step):
    t0 = time.time()
    result = evaluate(state["params"], domain, "valid")
    writer.write(step, "valid", result)
    best.update(step, result, state["params"])
    log.info("step %d valid %s=%.4f (best %s at step %s)", step, best.metric, result[best.metric],
             "-" if best.meta["best_value"] is None else f"{best.meta['best_value']:.4f}", best.meta["best_step"])
    side_seconds[0] += time.time() - t0

  t_train = time.time()
  if start_step == 0 and (config.train.eval_at_start or num_steps == 0) and best.meta["best_step"] is None:
    run_eval(0)
  bar = writing.progress_bar(num_steps, start_step, config.train.progress_bar and is_main)
  step, killed, stopped_early = start_step, False, False
  stop_at = start_step + config.train.stop_after_steps if config.train.stop_after_steps > 0 else None
  t_window, window_examples = time.time(), 0
  finished = start_step >= num_steps or best.should_stop
  health = Divergence(workdir, latest)
  for step_batches in pipeline.iterate_streams(streams, start_step, num_steps) if not finished else ():
    state, stats = train_step(state, sharding.put_batch(step_batches, mesh), base_rng)
    step += 1
    health.add(step, stats)
    if step in prune_events:
      health.check()  # new masks at the scheduled ratio; pruned entries zeroed now
      params = sharding.to_host(state["params"])
      masks = pruner.masks(params, prune_events[step])
      state["masks"] = jax.device_put(masks, param_sh)
      state["params"] = jax.device_put(jax.tree.map(lambda p, m: p * m, params, masks), param_sh)
      log.info("step %d: pruned to %.1f%% (%s)", step, 100 * prune_events[step], pruner.kind)
      if pruner.kind == "items":
        evaluate.candidates = pruning.served_items(masks, plan.roles)
    window_examples += config.train.batch_size
    bar.update(1)
    will_save = (step % config.train.checkpoint_every_steps == 0 or step == num_steps
                 or step % config.train.eval_every_steps == 0)
    if will_save or step % config.train.log_every_steps == 0:
      health.check()  # before any evaluation or checkpoint sees non-finite params
    if step % config.train.log_every_steps == 0 or step == num_steps:
      stats = {k: v for k, v in jax.device_get(stats).items() if k != "finite"}
      elapsed = time.time() - t_window
      row = {k: float(v) for k, v in stats.items()}
      row.update(lr=float(schedule(step - 1)), examples_per_second=window_examples / max(elapsed, 1e-9))
      writer.write(step, "train", row)
      bar.set_postfix(loss=f"{row['loss']:.4f}")
      t_window, window_examples = time.time(), 0
    if step % config.train.eval_every_steps == 0 or step == num_steps:
      run_eval(step)
      stopped_early = best.should_stop
    if step % config.train.checkpoint_every_steps == 0 or step == num_steps or stopped_early:
      t0 = time.time()
      ckpt.save_state(latest, step, state, dict(best.meta))
      side_seconds[0] += time.time() - t0
    if stopped_early:
      log.info("early stopping at step %d: %d evaluations without improvement", step,
               best.meta["evals_since_best"])
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
  if killed:  # simulated kill: no final evaluation, no results
    writer.close()
    return {"stopped_at_step": step}

  # Final metrics at the best validation checkpoint (never the final params, unless they are best).
  t_final = time.time()
  best_params, best_step = ckpt.restore_best_params(workdir, state["params"])
  valid, valid_ranks = evaluate(best_params, domain, "valid", with_ranks=True)
  test, test_ranks = evaluate(best_params, domain, "test", with_ranks=True)
  meta = best.meta
  last_eval = meta.get("last_eval_step")
  results = {
      "config": config.to_dict(),
      "protocol": evaluation.protocol(config.eval, domain.population),
      "init": {"kind": init.kind, "path": init.path},
      "model": {"name": config.model.name, "encoder": plan.encoder,
                "objective": [[t.name, w] for t, w in model.objective.terms],
                "item_repr": config.model.item_repr, "item_text": text_info},
      "transfer": {"strategy": plan.name, **budget,
                   "items": report["items"] if report else None,
                   "item_overlap": overlap, "item_tables": plan.item_tables,
                   "not_applicable": plan.not_applicable or None,
                   "source_encoder": model.source.name if model.source else None,
                   "teacher": model.teacher["info"] if model.teacher else None,
                   "cross_user": domain.cross.report if domain.cross is not None else None,
                   "synthesis": synthesised},
      "best_step": int(best_step),
      "final_step": int(step),
      "stopped_early": stopped_early,
      "budget": {"num_steps": int(num_steps), "steps_run": int(step),
                 "warmup_steps": optim.warmup_steps(config.optim, max(num_steps, 1)) if num_steps else 0,
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
  if pruner is not None:
    results["pruning"] = _pruning_report(config, pruner, plan, best_params, state, domain, mesh, rules, test)
  if getattr(module, "domains", None):  # multi-domain: every domain's metrics at the same checkpoint
    results["domains"] = {"target": {"valid": valid, "test": test}}
    if source is not None and "source" in module.domains:
      source = dataclasses.replace(source, eval_users=source.eval_users[source.lengths[source.eval_users] >= 3])
      other = evaluation.Evaluator(module, domain.num_items, max_len, config.eval, mesh, param_sh,
                                   {"domain": "source"})
      results["domains"]["source"] = {"valid": other(best_params, source, "valid"),
                                      "test": other(best_params, source, "test"),
                                      "population_users": int(len(source.eval_users))}
  results["wall_seconds"] = {"data": t_data - t_start, "train": train_seconds,
                             "final_eval": time.time() - t_final, "total": time.time() - t_start}
  stepping = max(train_seconds - side_seconds[0], 1e-9)  # the loop without evaluations and checkpoints
  results["throughput"] = {
      "train_sequences_per_second": (step - start_step) * config.train.batch_size / stepping if step > start_step else None,
      "eval_users_per_second": valid["users_per_second"]}
  writer.write(int(best_step), "test", results["test"])
  writer.close()
  if is_main:
    writing.write_json_atomic(os.path.join(workdir, runfiles.RESULTS_FILE), results)
  return results


def _pruning_report(config, pruner, plan, best_params, state, domain, mesh, rules, test) -> dict:
  """Sparsity and size of the pruned model; for structured pruning, the smaller dense model built
  from it, evaluated (same scores, faster)."""
  kind, ratio, events, start, end = plan.strategy.prune
  masks = sharding.to_host(state["masks"])
  params = sharding.to_host(best_params)
  flat_m = common.flatten(masks)
  nonzero = int(sum(np.count_nonzero(np.asarray(v)) for v in jax.tree.leaves(params)))
  report = {"kind": kind, "ratio": ratio, "events": events, "start": start, "end": end,
            "sparsity_of_blocks": pruning.sparsity(params, masks, pruner.prunable(flat_m)),
            "items_served": int(pruning.served_items(masks, plan.roles)[1:domain.num_items + 1].sum()),
            "params": common.param_count(params), "nonzero_params": nonzero,
            "stored_bytes_sparse": nonzero * 4 + nonzero * 4}  # value + index per kept entry
  if kind == "items":  # a model over the kept items only: a smaller table, fewer scores per user
    served = int(report["items_served"])
    small = served_model(config, kind, {"num_items": served}, domain.num_items)
    shapes = {p: tuple(v.shape) for p, v in common.flatten(nn.unbox(_abstract_params(small, config))).items()}
    small_params, id_map = pruning.shrink_items(params, masks, plan.roles, shapes, domain.num_items,
                                                bool(small.uses_mask_token))
    kept_ids = np.flatnonzero((id_map >= 1) & (id_map <= served))
    dense_domain = dataclasses.replace(
        domain, id_map=id_map[:domain.num_items + 1] if domain.id_map is None else id_map[domain.id_map],
        item_keys=[domain.item_keys[i - 1] for i in kept_ids] + ["<pruned>"],
        pseudo={u: (id_map[b], id_map[a]) for u, (b, a) in domain.pseudo.items()} if domain.pseudo else None)
    report["dense"] = _dense_report(small, small_params, {"num_items": served}, served, dense_domain, config,
                                    mesh, rules, test)
  elif kind == "dims":  # item tables of the kept dims: fewer bytes per item, fewer multiply-adds per score
    small_params, fields = pruning.shrink_dims(params, masks, plan.roles)
    small = served_model(config, kind, fields, domain.num_items)
    report["dense"] = _dense_report(small, small_params, {"item_columns": len(fields["item_columns"])},
                                    domain.num_items, domain, config, mesh, rules, test)
  elif kind in ("heads", "mlp"):
    # the masks of the best checkpoint's step (masks only grow), so shrink the best params with the final masks
    small_params, fields = pruning.shrink(params, masks, kind, plan.roles)
    small = served_model(config, kind, fields, domain.num_items)
    report["dense"] = _dense_report(small, small_params, fields, domain.num_items, domain, config, mesh, rules, test)
  return report


def served_model(config, kind: str | None, fields: dict, num_items: int):
  """The module a run serves: its own model (kind None, or unstructured magnitude pruning), or the
  smaller dense model structured pruning makes of it, from the fields its pruning report records:
  items {"num_items": kept items} (the table keeps one more row: pruned ids map to it), dims
  {"item_columns": kept dims}, heads / mlp the encoder's own fields (kept heads / channels)."""
  if kind == "items":
    return models.build(model_config(config, {}), int(fields["num_items"]) + 1)
  if kind == "dims":
    return models.build(model_config(config, fields), num_items)
  if kind in ("heads", "mlp"):
    cfg = model_config(config, {})
    with cfg.unlocked():
      own = cfg[config.model.name]
      if kind == "heads":  # fewer heads of the same width each
        own.head_dim = own.get("head_dim", 0) or config.model.embed_dim // own.num_heads
      own.update(fields)
    return models.build(cfg, num_items)
  return models.build(model_config(config, {}), num_items)


def _abstract_params(module, config):
  return jax.eval_shape(
      lambda: module.init({"params": jax.random.key(0)}, jnp.ones((1, config.model.max_len), jnp.int32))["params"])


def _dense_report(small, small_params, fields, num_items, domain, config, mesh, rules, test) -> dict:
  """The structurally pruned model as a smaller dense one, evaluated on the test split (after an
  untimed warm-up batch, so its users/s compares with the masked model's)."""
  small_sh = sharding.param_shardings(_abstract_params(small, config), mesh, rules)
  evaluate = evaluation.Evaluator(small, num_items, config.model.max_len, config.eval, mesh, small_sh)
  small_params = jax.device_put(small_params, small_sh)
  evaluate.warm_up(small_params, domain)
  dense = evaluate(small_params, domain, "test")
  return {"model_fields": fields, "params": common.param_count(small_params),
          "stored_bytes": int(sum(np.asarray(v).nbytes for v in jax.tree.leaves(small_params))),
          "test": dense, "eval_users_per_second": dense["users_per_second"],
          "masked_eval_users_per_second": test["users_per_second"]}
