"""Checkpoints in the workdir (orbax) and the load priority.

  WORKDIR/checkpoints/<step>/  latest train states (params, optimizer, step) + loop meta,
                               saved every `checkpoint_every_steps`, last `keep_checkpoints` kept
  WORKDIR/best/<step>/         params of the best validation evaluation so far (one kept;
                               BestTracker decides, and stops early)

Load priority (first that applies wins), see `resolve_init`:
  1. resume from WORKDIR        the workdir already has a train state: continue it
  2. explicit resume path       `train.resume_from`: another run's latest train state
  3. pretrained init            `train.init_from`: another run's best params, fresh optimizer
  4. scratch                    random init
"""

from __future__ import annotations

import dataclasses
import logging
import os

import jax
import orbax.checkpoint as ocp

from xrec import runfiles
from xrec import runindex
from xrec import sharding
from xrec.data import pipeline

LATEST_DIR = "checkpoints"
BEST_DIR = "best"
log = logging.getLogger("xrec")
INIT_KINDS = ("resume_workdir", "resume_path", "pretrained", "scratch")


@dataclasses.dataclass(frozen=True)
class InitSource:
  kind: str  # one of INIT_KINDS
  path: str = ""


def _handlers(array_item: str) -> dict:
  """Item name -> handler, so metadata reads know each item's type (no orbax warnings)."""
  return {array_item: ocp.StandardCheckpointHandler(), "meta": ocp.JsonCheckpointHandler()}


def _manager(directory: str, max_to_keep: int, create: bool = True,
             array_item: str | None = None) -> ocp.CheckpointManager:
  # with several processes, orbax synchronises each save on a barrier named after its step: the
  # latest and best managers both save step N when N is a new best, so each gets its own names
  # (without a prefix the second save fails with "Barrier _async_write_complete.N is already
  # ongoing" and the run hangs until the barrier times out)
  prefix = os.path.basename(os.path.normpath(directory))
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=create,
      multiprocessing_options=ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=prefix))
  handlers = _handlers(array_item) if array_item else None
  return ocp.CheckpointManager(os.path.abspath(directory), options=options, item_handlers=handlers)


def latest_manager(workdir: str, keep: int = 2) -> ocp.CheckpointManager:
  return _manager(os.path.join(workdir, LATEST_DIR), keep, array_item="state")


def best_manager(workdir: str) -> ocp.CheckpointManager:
  return _manager(os.path.join(workdir, BEST_DIR), 1, array_item="params")


def _latest_step(directory: str):
  if not os.path.isdir(directory):
    return None
  mgr = _manager(directory, 1, create=False)
  try:
    return mgr.latest_step()
  finally:
    mgr.close()


def has_train_state(workdir: str) -> bool:
  return bool(workdir) and _latest_step(os.path.join(workdir, LATEST_DIR)) is not None


def has_best_params(workdir: str) -> bool:
  return bool(workdir) and _latest_step(os.path.join(workdir, BEST_DIR)) is not None


def resolve_init(workdir: str, train_cfg) -> InitSource:
  """The load priority, in one place: resume workdir > resume path > pretrained > scratch."""
  if has_train_state(workdir):
    return InitSource("resume_workdir", workdir)
  if train_cfg.resume_from:
    if not has_train_state(train_cfg.resume_from):
      raise FileNotFoundError(
          f"train.resume_from={train_cfg.resume_from!r} has no train state under "
          f"{os.path.join(train_cfg.resume_from, LATEST_DIR)}")
    return InitSource("resume_path", train_cfg.resume_from)
  if train_cfg.init_from:
    if not has_best_params(train_cfg.init_from):
      raise FileNotFoundError(
          f"train.init_from={train_cfg.init_from!r} has no best params under "
          f"{os.path.join(train_cfg.init_from, BEST_DIR)}")
    return InitSource("pretrained", train_cfg.init_from)
  return InitSource("scratch")


def abstract_like(tree):
  """ShapeDtypeStructs (with shardings) of a concrete tree: the restore target."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def save_state(mgr: ocp.CheckpointManager, step: int, state: dict, meta: dict) -> None:
  mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                         meta=ocp.args.JsonSave(meta)))


def restore_state(directory_workdir: str, target_state: dict):
  """Latest readable (state, meta) of a run's workdir, restored with target's shapes and shardings.

  The newest checkpoint is tried first; one that cannot be read (a truncated file, an empty
  metadata file: a disk that filled up or a copy cut short) is logged with the reason, moved
  aside to `<step>.unreadable` (kept for inspection; the resumed run saves that step again) and
  the previous one is tried. No readable checkpoint at all is an error listing each reason."""
  directory = os.path.join(directory_workdir, LATEST_DIR)
  mgr = _manager(directory, 1, create=False, array_item="state")
  problems = []
  try:
    for step in sorted(mgr.all_steps(), reverse=True):
      try:
        restored = mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(target_state)), meta=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 -- any read error: fall back to the previous checkpoint
        reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        path = os.path.join(directory, str(step))
        problems.append(f"{path}: {reason}")
        log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, reason)
        if jax.process_index() == 0 and os.path.isdir(path):
          os.replace(path, path + ".unreadable")
        continue
      if problems:
        log.warning("resuming from %s (step %d)", os.path.join(directory, str(step)), step)
      return restored["state"], restored["meta"]
  finally:
    mgr.close()
  raise ValueError(f"no readable checkpoint under {directory}:\n  " + "\n  ".join(problems)
                   + "\ndelete the workdir (or that folder) to train from the start")


def save_best(mgr: ocp.CheckpointManager, step: int, params, meta: dict) -> None:
  if step in mgr.all_steps():  # left by a killed run; training is deterministic, so it is rewritten
    mgr.delete(step)
  mgr.save(step, args=ocp.args.Composite(params=ocp.args.StandardSave(params),
                                         meta=ocp.args.JsonSave(meta)), force=True)


def restore_best_params(workdir: str, target_params=None):
  """Best params of a run. With `target_params`, shapes/shardings must match it exactly;
  without, the tree comes back as saved (for surgery into another model). An unreadable best
  checkpoint is an error naming it (nothing falls back silently: other params are not the best)."""
  mgr = _manager(os.path.join(workdir, BEST_DIR), 1, create=False, array_item="params")
  step = None
  try:
    step = mgr.latest_step()
    if target_params is None:
      # Restore as host numpy arrays in the saved structure (any device count).
      meta = mgr.item_metadata(step)["params"]
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), meta.tree
                            if hasattr(meta, "tree") else meta)
      args = ocp.args.Composite(params=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore())
    else:
      args = ocp.args.Composite(params=ocp.args.StandardRestore(abstract_like(target_params)),
                                meta=ocp.args.JsonRestore())
    return mgr.restore(step, args=args)["params"], step
  except Exception as e:  # noqa: BLE001 -- a read error names the checkpoint
    if isinstance(e, ValueError) and "does not fit" in str(e):
      raise
    path = os.path.join(workdir, BEST_DIR, str(step))
    reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    raise ValueError(f"the best params at {path} are unreadable ({reason}). They are the run's result and "
                     f"cannot be replaced by other params: re-evaluate by retraining this run (delete "
                     f"{workdir} and rerun; a study reruns only that stage)") from e
  finally:
    mgr.close()


def load_initial(train, workdir: str, plan, module, source, state: dict, param_sh, domain):
  """The load priority (`resolve_init`) applied to `state` (its checkpointed part) of a run whose
  bound transfer plan is `plan` (module: the encoder to train; source: the pretrained encoder's
  description): returns (state, loop meta, InitSource, transfer report or None)."""
  init = resolve_init(workdir, train)
  if jax.process_count() > 1:  # every process decides before any creates the checkpoint folders
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("xrec:resolve_init")
  meta, report = BestTracker.fresh_meta(), None
  if init.kind in ("resume_workdir", "resume_path"):
    state, meta = restore_state(init.path, state)
    report = runfiles.read_transfer_report(init.path)  # what the first start loaded
  elif module.fitted:  # counted, not trained: the training users' item counts
    counts = pipeline.item_counts(domain)
    state["params"] = jax.device_put(module.fit_params(counts), param_sh)
    init = InitSource("fitted")
  elif init.kind == "pretrained" and not plan.strategy.load and plan.strategy.teacher:
    init = InitSource("scratch")  # distill: train.init_from is the teacher, the student starts fresh
  elif init.kind == "pretrained":
    if not plan.strategy.load:
      raise ValueError(f"train.init_from={init.path!r} is set but transfer.strategy="
                       f"{plan.name!r} loads nothing; pick a strategy that loads "
                       "(e.g. full_finetune) or clear train.init_from")
    pretrained, _ = restore_best_params(init.path)
    params, report = plan.init_params(sharding.to_host(state["params"]), pretrained,
                                      runfiles.read_item_keys(init.path), domain.item_keys, source)
    state["params"] = jax.device_put(params, param_sh)
    if jax.process_index() == 0:  # a resumed run reports the same loading (shared params, items)
      runindex.write_json_atomic(os.path.join(workdir, runfiles.TRANSFER_REPORT_FILE),
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

  def update(self, step: int, result: dict, params, counts: bool = True) -> None:
    """counts=False: an extra evaluation (train.eval_at_steps) may set the best but does not count
    toward the patience, which stays in units of the regular cadence."""
    self.meta["evaluations"] = self.meta.get("evaluations", 0) + 1
    self.meta["last_eval_step"] = step
    if step < self.min_step:
      return
    value = result[self.metric]
    if self.meta["best_value"] is None or value > self.meta["best_value"]:
      self.meta.update(best_value=value, best_step=step, evals_since_best=0)
      save_best(self.manager, step, params, {"step": step, "valid": result})
    elif counts:
      self.meta["evals_since_best"] += 1

  @property
  def should_stop(self) -> bool:
    return bool(self.patience and self.meta["evals_since_best"] >= self.patience)
