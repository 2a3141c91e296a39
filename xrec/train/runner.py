"""Studies: a config's `sweep()` grid run as cached, resumable pipelines, with a run index.

A config module may define

  sweep()    yields dicts of overrides, dotted field -> value, one per cell, e.g.
             {"transfer.strategy": "adapter", "data.user_fraction": 0.05, "seed": 1}
  metrics()  what the report's tables show: {"metrics": ("ndcg@10", ...), "columns": "data.user_fraction"}
             (optional keys "rows", default "transfer.strategy", and "seed", default "seed")

A pretrain -> transfer config without sweep() is the one-seed study of its
experiment.strategies (`implicit_study`): there is one runner.

Each cell is the config with its overrides applied, run as a pipeline of stages
(xrec/train/experiment.py: `experiment.mode = "pretrain_transfer"` gives pretrain -> transfer with
the cell's `transfer.strategy`, "scratch" needing no pretraining; "single" gives one run). The
trained stage is tuned: one candidate stage per point of the `tune` grid (learning rates), and the
cell keeps the candidate with the best validation metric, so no strategy is handicapped by one
shared learning rate. Every stage lives in WORKDIR/stages/<hash>/ keyed by the config it depends
on, so the pretraining shared by every strategy and fraction of a seed runs once, a killed study
resumes where it stopped and a changed field re-runs only what depends on it.

  WORKDIR/study.json   the config file, its argument, the cells and the table layout
  WORKDIR/runs.jsonl   one line per cell run: key, overrides, status (done | failed | stopped),
                       metrics at the best validation step of the chosen candidate, the tuning
                       (every candidate's validation metric, the chosen values), the budget (steps
                       run, best step, still improving), the evaluation population, the item
                       overlap, per-user test ranks (for bootstrap tests), wall time, stage
                       hashes, error
  WORKDIR/stages/      the stages

`python -m xrec.report WORKDIR` makes the tables and plots (xrec/report).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import os
import socket
import subprocess
import time
import traceback
import types
from typing import Any

from xrec import models
from xrec.models import common
from xrec import runindex
from xrec.data import fingerprint
from xrec.config import TUNED_FIELDS, copy_config, model_config, with_overrides
from xrec.train import experiment
from xrec.train import loop
from xrec.train import objectives
from xrec.transfer import strategies

log = logging.getLogger("xrec")
STAGES_DIR = runindex.STAGES_DIR
read_runs, latest_runs = runindex.read_runs, runindex.latest_runs  # the index's readers, for callers of the runner
DEFAULT_LAYOUT = {"metrics": ("ndcg@10", "hr@10"), "rows": "transfer.strategy", "columns": (), "seed": "seed",
                  # row_detail: a field that splits a row into variants (report.tables.row_label);
                  # speed_plot: also plot quality vs the served model's evaluation users/s
                  "row_detail": "", "speed_plot": False}
ERROR_TAIL_CHARS = 3000  # traceback tail kept in runs.jsonl


@dataclasses.dataclass(frozen=True)
class Cell:
  index: int
  key: str
  overrides: dict[str, Any]


def config_file_of(flag_value: str) -> tuple[str, str | None]:
  """`configs/x.py:arg` -> ("configs/x.py", "arg"); the ConfigDict flag keeps only the config."""
  path, sep, arg = flag_value.partition(":")
  return path, (arg if sep else None)


def load_config_module(path: str):
  """Imports a config file by path (configs are files, not packages) to reach sweep() / metrics()."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  name = "xrec_study_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _value_text(value) -> str:
  if isinstance(value, (list, tuple)):
    return "(" + ",".join(_value_text(v) for v in value) + ")"
  return str(value)


ONE_CELL_KEY = "config"  # the key of a cell without overrides (a one-cell study: the config itself)


def cell_key(overrides: dict[str, Any]) -> str:
  """`field=value,...` in the sweep's own order: stable across runs, readable in runs.jsonl."""
  return ",".join(f"{field}={_value_text(value)}" for field, value in overrides.items()) or ONE_CELL_KEY


def cells_of(module) -> list[Cell]:
  """The sweep's cells in order; a sweep that yields a non-dict or the same cell twice fails."""
  if not hasattr(module, "sweep"):
    raise ValueError(f"config {getattr(module, '__file__', module)!r} defines no sweep()")
  cells, seen = [], {}
  for index, overrides in enumerate(module.sweep()):
    if not isinstance(overrides, dict) or not all(isinstance(k, str) for k in overrides):
      raise ValueError(f"sweep() cell {index} is {overrides!r}; each cell must be a dict of "
                       "dotted field -> value")
    key = cell_key(overrides)
    if key in seen:
      raise ValueError(f"sweep() yields cell {key!r} twice (indices {seen[key]} and {index})")
    seen[key] = index
    cells.append(Cell(index, key, dict(overrides)))
  if not cells:
    raise ValueError("sweep() yields no cells")
  return cells


def apply_overrides(config, overrides: dict[str, Any]):
  """A copy of `config` with a cell's dotted fields set; an unknown field fails with the valid names."""
  return with_overrides(config, overrides, "sweep field")


def layout_of(module) -> dict:
  """metrics() normalised: metric names, row / column / seed fields (columns: a tuple of fields)."""
  layout = dict(DEFAULT_LAYOUT)
  if hasattr(module, "metrics"):
    given = module.metrics()
    if not isinstance(given, dict):
      raise ValueError(f"metrics() returned {given!r}; it must return a dict with keys "
                       f"{sorted(DEFAULT_LAYOUT)}")
    unknown = sorted(set(given) - set(DEFAULT_LAYOUT))
    if unknown:
      raise ValueError(f"metrics() has unknown keys {unknown}; valid: {sorted(DEFAULT_LAYOUT)}")
    layout.update(given)
  if isinstance(layout["metrics"], str):
    layout["metrics"] = (layout["metrics"],)
  if isinstance(layout["columns"], str):
    layout["columns"] = (layout["columns"],)
  layout["metrics"], layout["columns"] = list(layout["metrics"]), list(layout["columns"])
  return layout


def select(cells: list[Cell], only: str | None) -> list[Cell]:
  """`only`: a cell key or its index in the sweep."""
  if only is None or only == "":
    return cells
  if only.strip().lstrip("-").isdigit():
    index = int(only)
    if not 0 <= index < len(cells):
      raise ValueError(f"--only={only}: no cell with that index; valid: 0..{len(cells) - 1}")
    return [cells[index]]
  for cell in cells:
    if cell.key == only:
      return [cell]
  raise ValueError(f"--only={only!r} is no cell key; valid (see --list): {[c.key for c in cells][:10]}"
                   + (" ..." if len(cells) > 10 else ""))


def list_text(cells: list[Cell]) -> str:
  return "\n".join(f"{c.index}\t{c.key}" for c in cells)


@dataclasses.dataclass
class Stage:
  kind: str  # one of experiment.STAGE_KINDS
  config: Any  # the stage's own config
  depends_on: dict[str, str]  # dependency name -> stage hash
  overrides: dict[str, Any] = dataclasses.field(default_factory=dict)  # a tuning candidate's values

  @property
  def hash(self) -> str:
    return experiment.stage_hash(self.config, self.depends_on)


def _strategy_of(config):
  """The cell's preset built on its encoder's roles (no data needed: roles do not depend on the
  catalogue)."""
  fields = strategies.MODEL_FIELDS.get(config.transfer.strategy, {})
  model_cfg = model_config(config.model, fields)
  if model_cfg.get("item_repr", "id") != "id" and not model_cfg.text.dim:
    model_cfg.text.dim = 1  # text items: the trainer sets the width from the encoder; roles do not depend on it
  encoder = models.build(model_cfg, num_items=1)
  options = config.transfer
  if options.strategy == "distill" and options.distill.hidden_weight > 0 and not options.distill.teacher_embed_dim:
    options = copy_config(options)  # the trainer sets the teacher's width from the teacher run; the
    options.distill.teacher_embed_dim = 1  # preset's schedule and terms do not depend on it
  return strategies.get_strategy(options.strategy, options, encoder.roles(), bool(encoder.causal))


def lr_mult_matters(config) -> bool:
  """True when transfer.lr_mult changes training in a way optim.lr cannot: some trained params
  follow lr_mult and others (fresh modules, new blocks) do not. When every trained param follows
  it (full_finetune, frozen_encoder, ...), tuning optim.lr already tunes it; when none does
  (scratch), it has no effect."""
  base, doubled = copy_config(config), copy_config(config)
  doubled.transfer.lr_mult = 2.0 * config.transfer.lr_mult
  pairs = [(m1, m2) for (_, m1), (_, m2) in zip(_strategy_of(base).schedule, _strategy_of(doubled).schedule)
           if m1 is not None]
  follows = [abs(m2 - 2.0 * m1) <= 1e-12 * max(abs(m1), 1.0) for m1, m2 in pairs]
  return any(follows) and not all(follows)


def tuning_grid(config) -> tuple[list[dict[str, Any]], dict]:
  """The candidate overrides of a cell's trained stage (the `tune` grid; one candidate, no
  overrides, when nothing is tuned) and a note of what was tuned and why."""
  note = {}
  if models.model_class(config.model.name).fitted:
    return [{}], {"tuned": {}, "skipped": "the model is fitted by counting, not trained"}
  if not _strategy_of(config).train:
    return [{}], {"tuned": {}, "skipped": "the strategy trains nothing"}
  axes = []
  if config.tune.lr:
    axes.append(("optim.lr", [float(v) for v in config.tune.lr]))
  if config.tune.lr_mult:
    if lr_mult_matters(config):
      axes.append(("transfer.lr_mult", [float(v) for v in config.tune.lr_mult]))
    else:
      note["transfer.lr_mult"] = ("not tuned: every trained param follows it (so tuning optim.lr "
                                  "tunes it) or none does")
  # the grids' values were checked with their fields' ranges (config.TUNED_FIELDS) before any work
  candidates = [{}]
  for field, values in axes:
    candidates = [{**c, field: v} for c in candidates for v in values]
  note["tuned"] = {field: values for field, values in axes}
  return candidates, note


def plan_stages(config, stages_dir: str) -> tuple[list[Stage], list[Stage], dict]:
  """A cell's stages: (prerequisites in order, the candidates of its trained stage, tuning note).
  The cell's result is the candidate with the best validation `train.best_metric`."""
  mode = config.experiment.mode
  if mode not in experiment.MODES:
    raise ValueError(f"Unknown experiment.mode {mode!r}; valid: {list(experiment.MODES)}")
  experiment.check_transfer_protocol(config)
  candidates, note = tuning_grid(config)
  if mode == "single":
    base, kind, prereq, deps = experiment.stage_config(config), "single", [], {}
  elif config.transfer.strategy == "scratch":  # loads nothing: no pretraining to wait for
    base, kind, prereq, deps = experiment.transfer_config(config, "scratch", ""), "transfer", [], {}
  else:
    pre = Stage("pretrain", experiment.pretrain_config(config), {})
    prereq, deps, kind = [pre], {"pretrain": pre.hash}, "transfer"
    base = experiment.transfer_config(config, config.transfer.strategy, os.path.join(stages_dir, pre.hash))
  stages = [Stage(kind, apply_overrides(base, o), deps, o) for o in candidates]
  return prereq, stages, note


def is_main_process() -> bool:
  import jax
  return jax.process_index() == 0


def _planned_hashes(prereq: list[Stage], candidates: list[Stage]) -> list[str]:
  return [st.hash for st in prereq + candidates]


def _select_candidate(config, results: list[dict]) -> int:
  """Index of the candidate with the best validation metric (first in grid order on ties)."""
  metric = config.train.best_metric
  values = [r["valid"][metric] for r in results]
  return max(range(len(values)), key=lambda i: (values[i], -i))


def rungs(config) -> list[int]:
  """The steps at which successive halving (tune.halving = eta) ranks the candidates still in: the
  budget / eta^r for r = tune.rungs .. 1, rounded down to evaluations (train.eval_every_steps);
  rungs below one evaluation are dropped. [] when halving is off."""
  eta = int(config.tune.halving)
  if not eta:
    return []
  if eta < 2:
    raise ValueError(f"tune.halving={eta} keeps every candidate; use 0 (off) or an eta >= 2 (keep 1/eta per rung)")
  total, every = int(config.train.num_steps), int(config.train.eval_every_steps)
  if total <= 0:
    raise ValueError("tune.halving ranks candidates at fractions of a budget in steps: set train.num_steps "
                     "(train.num_epochs is known only once the data is read)")
  points = {total // eta ** r // every * every for r in range(int(config.tune.rungs), 0, -1)}
  return sorted(p for p in points if every <= p < total)


def _best_so_far(stage_dir: str, metric: str) -> tuple[float, int]:
  """(value, step) of the best validation `metric` a stopped stage has logged (metrics.jsonl; the
  earliest step of a tie)."""
  with open(os.path.join(stage_dir, "metrics.jsonl")) as f:
    rows = [(r[metric], -r["step"]) for r in map(json.loads, f) if r.get("split") == "valid"]
  if not rows:
    raise RuntimeError(f"stage {stage_dir} stopped at a rung without an evaluation")
  value, step = max(rows)
  return value, -step


def run_candidates(config, candidates: list[Stage], stages_dir: str) -> tuple[list, dict]:
  """([(stage, results)] of the candidates trained to the end, in grid order; halving note). With
  tune.halving = eta and two or more candidates, successive halving: at each rung every candidate
  still in trains up to that step (train.stop_at_step; the stage resumes from its checkpoints at
  the next rung, so a survivor's results equal an uninterrupted run's) and the best ceil(n / eta)
  by validation so far stay in; the survivors train the whole budget. A dropped candidate keeps
  its stage folder (resumable, e.g. by a later study without halving)."""
  points = rungs(config) if len(candidates) > 1 else []
  live, dropped = list(range(len(candidates))), []
  metric = config.train.best_metric
  for point in points:
    if len(live) < 2:
      break
    best = {}
    for i in live:
      st = candidates[i]
      cfg = apply_overrides(st.config, {"train.stop_at_step": point})
      results = experiment.run_cached_stage(cfg, stages_dir, st.kind, st.depends_on)
      if "stopped_at_step" in results and results["stopped_at_step"] < point:
        return [], {"stopped": results}  # train.stop_after_steps (a kill) inside a rung
      # (value, best step); a candidate that stopped early before the rung has its results
      best[i] = ((results["valid"][metric], int(results["best_step"])) if "valid" in results
                 else _best_so_far(os.path.join(stages_dir, st.hash), metric))
    keep = sorted(live, key=lambda i: (-best[i][0], i))[:-(-len(live) // int(config.tune.halving))]
    # "improving": its best validation so far was its evaluation at the rung, so it was dropped while
    # still gaining (the report names such drops: the ranking at the rung may not be the final one)
    dropped += [{"overrides": candidates[i].overrides, "stage": candidates[i].hash, "rung_step": point,
                 "valid_so_far": best[i][0], "best_step_so_far": best[i][1], "improving": best[i][1] == point,
                 "kept_valid_so_far": max(best[k][0] for k in keep)} for i in live if i not in keep]
    live = sorted(keep)
  done = []
  for i in live:
    st = candidates[i]
    results = experiment.run_cached_stage(st.config, stages_dir, st.kind, st.depends_on)
    if "stopped_at_step" in results:
      return [], {"stopped": results}
    done.append((st, results))
  note = {"halving": {"eta": int(config.tune.halving), "rungs": points, "dropped": dropped}} if points else {}
  return done, note


def stage_for(config, stages_dir: str, overrides: dict) -> Stage:
  """The cell's trained stage at the tuned values `overrides` (a grid point or one beyond it): the
  same stage, hash included, that a grid holding those values plans."""
  tune = {f: ((overrides[target],) if target in overrides else ()) for f, target in TUNED_FIELDS.items()}
  _, stages, _ = plan_stages(apply_overrides(config, tune), stages_dir)
  if len(stages) != 1 or stages[0].overrides != overrides:
    raise ValueError(f"tuned values {overrides} do not make one candidate of this cell "
                     f"(got {[st.overrides for st in stages]})")
  return stages[0]


def extend_at_edge(config, stages_dir: str, done: list, tuned: dict,
                   added: list | None = None) -> tuple[list, dict, dict]:
  """tune.extend_at_edge = k: while the best of `done` ([(stage, results)], the grid's finished
  candidates) has a value at an edge of its field's grid (two or more values) and fewer than k
  candidates were added, one more candidate one step beyond that edge (the grid's outer ratio:
  9e-3 after {1e-3, 3e-3}) trains the whole budget; the cell chooses among them all. `added`: the
  extensions already in `done` and `tuned` (a record's, when k was raised since). Returns (done
  with the added ones, {"extended": [...]} or {"stopped": results} (train.stop_after_steps), the
  grids with the added values)."""
  grids = {f: sorted(float(v) for v in values) for f, values in tuned.items()}
  metric, added = config.train.best_metric, list(added or [])
  while len(added) < int(config.tune.extend_at_edge):
    chosen = done[_select_candidate(config, [r for _, r in done])][0].overrides
    edges = runindex.grid_edges({"tuned": grids, "chosen": chosen})
    if not edges:
      break
    field, values = edges[0], grids[edges[0]]
    outer = (values[-1], values[-2]) if chosen[field] == values[-1] else (values[0], values[1])
    value = float(f"{chosen[field] * outer[0] / outer[1]:.6g}")
    stage = stage_for(config, stages_dir, {**chosen, field: value})
    results = experiment.run_cached_stage(stage.config, stages_dir, stage.kind, stage.depends_on)
    if "stopped_at_step" in results:
      return done, {"stopped": results}, grids
    done = done + [(stage, results)]
    grids[field] = sorted(values + [value])
    added.append({"overrides": stage.overrides, "stage": stage.hash, "valid": results["valid"][metric]})
    log.info("tune.extend_at_edge: %s=%g chosen at the grid's edge, so %s=%g trained too (valid %s=%.4f)",
             field, chosen[field], field, value, metric, results["valid"][metric])
  return done, ({"extended": added} if added else {}), grids


def _field_value(config, field: str):
  node = config
  for name in field.split("."):
    if not hasattr(node, "keys") or name not in node:
      return None
    node = node[name]
  return list(node) if isinstance(node, tuple) else node


def check_pretraining(config, results: dict) -> None:
  """experiment.min_pretrain_valid: a transfer cell refuses a pretrained model whose best validation
  metric is below it (a source model that has not converged says nothing about transfer)."""
  floor = float(config.experiment.min_pretrain_valid)
  metric = config.train.best_metric
  value = results["valid"][metric]
  if floor > 0 and value < floor:
    budget = results.get("budget") or {}
    raise ValueError(
        f"the pretraining {results['stage']['hash']} reached valid {metric}={value:.4f}, below "
        f"experiment.min_pretrain_valid={floor:g} (best step {results.get('best_step')} of "
        f"{budget.get('steps_run')}{', still improving' if budget.get('best_is_last_eval') else ''}): "
        "give it a budget that converges (experiment.pretrain.train.num_epochs / num_steps) or lower the floor")


def _tuned_choice(cfg, stages_dir: str, prereq: list, candidates: list, tuning: list, records: dict | None,
                  note: dict, record: dict) -> list:
  """A cell that reuses tune.seed's choice: the candidate it trains (its one stage), that choice read
  from the tuning seed's final record in the carried `records`, or from the tuning seed's grid run
  here (cached stages, shared with its own cell). Fills the tuning note and the record's planned
  and dropped stages."""
  recorded = recorded_tuning(records, tuning, int(cfg.tune.extend_at_edge))
  if recorded is not None:  # the tuning seed's cell is done in the carried records: its choice
    note.update(tuned_on_seed=int(cfg.tune.seed), tuning_from_record=recorded["key"],
                **{k: v for k, v in recorded["tuning"].items() if k == "halving"},
                tuning_candidates=recorded["tuning"]["candidates"])
    note.update({k: v for k, v in recorded["tuning"].items() if k in ("tuned", "extended")})
    chosen = recorded["tuning"]["chosen"]
    beyond = [e["overrides"] for e in recorded["tuning"].get("extended", ())]  # tune.extend_at_edge's
    candidates = [c for c in candidates if c.overrides == chosen] or (
        [stage_for(cfg, stages_dir, chosen)] if chosen in beyond else [])
    if not candidates:
      raise ValueError(f"the record of {recorded['key']!r} chose {chosen}, which is not in this cell's grid")
    record["planned"] = [st.hash for st in tuning] + _planned_hashes(prereq, candidates)
    record["dropped"] = list(recorded.get("dropped") or [])
  else:  # tune.seed: the grid runs on that seed (cached stages, shared with its own cell)
    for st in (st for st in tuning if st.kind == "pretrain"):
      results = experiment.run_cached_stage(st.config, stages_dir, st.kind, st.depends_on)
      if "stopped_at_step" in results:
        raise RuntimeError("a tuning stage was stopped (train.stop_after_steps); rerun to resume it")
      check_pretraining(cfg, results)
    grid = [st for st in tuning if st.kind != "pretrain"]
    tuned, halving = run_candidates(cfg, grid, stages_dir)
    if tuned:  # the grid's edges on the tuning seed's cell (its stages: cached when that cell ran)
      tuned, extended, note["tuned"] = extend_at_edge(tuning_config(cfg), stages_dir, tuned, note["tuned"])
      halving.update(extended)
    if not tuned or "stopped" in halving:
      raise RuntimeError("a tuning stage was stopped (train.stop_after_steps); rerun to resume it")
    best = _select_candidate(cfg, [r for _, r in tuned])
    note.update(tuned_on_seed=int(cfg.tune.seed), **halving, tuning_candidates=[
        {"overrides": st.overrides, "valid": r["valid"][cfg.train.best_metric], "stage": st.hash,
         "best_step": r.get("best_step")} for st, r in tuned])
    chosen = tuned[best][0].overrides  # the same point on this cell's seed (beyond the grid: its own stage)
    candidates = [c for c in candidates if c.overrides == chosen] or [stage_for(cfg, stages_dir, chosen)]
    record["planned"] = [st.hash for st in tuning] + _planned_hashes(prereq, candidates)
    record["dropped"] = [d["stage"] for d in halving.get("halving", {}).get("dropped", [])]
  return candidates


def run_cell(config, cell: Cell, workdir: str, layout: dict | None = None, records: dict | None = None) -> dict:
  """Runs one cell's stages; returns its run-index record (never raises for a failing cell).
  `records` (key -> last record; a study carried by its records): the tuning seed's choice is read
  from its done record instead of training its grid again, and a pretraining run again is compared
  with what the records saw of it."""
  t_start = time.time()
  stages_dir = os.path.join(workdir, STAGES_DIR)
  record = {"key": cell.key, "index": cell.index, "overrides": cell.overrides, "status": "failed",
            "stages": {}, "reused": [], "code": code_version()}
  try:
    cfg = apply_overrides(config, cell.overrides)
    # the values of the table's fields (rows, columns, seed) in this cell, overridden or not
    layout = layout or DEFAULT_LAYOUT
    fields = [layout["rows"], layout["seed"], *([layout["columns"]] if isinstance(layout["columns"], str)
                                                 else layout["columns"])]
    record["fields"] = {f: _field_value(cfg, f) for f in fields}
    prereq, candidates, note = plan_stages(cfg, stages_dir)
    record["planned"] = _planned_hashes(prereq, candidates)
    stage_seconds, done, pretrain = 0.0, [], None
    tuning = tuning_stages(cfg, stages_dir, candidates)
    if tuning:  # tune.seed: this cell trains the tuning seed's choice
      candidates = _tuned_choice(cfg, stages_dir, prereq, candidates, tuning, records, note, record)
    stopped = None
    for stage in prereq:
      results = experiment.run_cached_stage(stage.config, stages_dir, stage.kind, stage.depends_on)
      if "stopped_at_step" in results:  # train.stop_after_steps: resumes on the next run
        stopped = (stage, results)
        break
      if results["stage"]["reused"]:
        record["reused"].append(stage.kind)
      stage_seconds += results["wall_seconds"]["total"]
      record["stages"]["pretrain"] = stage.hash
      if records and not results["stage"]["reused"]:
        rerun = compare_rerun(records, stage.hash, results, cfg.train.best_metric)
        if rerun:
          record["pretrain_rerun"] = rerun
      check_pretraining(cfg, results)
      pretrain = results
    # a carried cell that tuned itself, run again to extend its grid (tune.extend_at_edge raised):
    # the grid's results come from its own record, only the extension trains here
    own = (recorded_grid(cfg, stages_dir, records, cell.key, record["planned"])
           if not tuning and len(candidates) > 1 else None)
    if stopped is None:
      if own is not None:
        done, halving = own["done"], {k: v for k, v in own["tuning"].items() if k == "halving"}
      else:
        done, halving = run_candidates(cfg, candidates, stages_dir)
      if not tuning and done and len(candidates) > 1:  # a cell that tunes itself: the grid's edges
        done, extended, note["tuned"] = extend_at_edge(
            cfg, stages_dir, done, own["tuning"]["tuned"] if own else note["tuned"],
            own["tuning"].get("extended") if own else None)
        halving.update(extended)
        record["extended"] = [e["stage"] for e in extended.get("extended", ())]
      if not tuning and "stopped" not in halving:
        note.update(halving)
      if "stopped" in halving:
        stopped = (candidates[0], halving["stopped"])
      if not tuning:
        record["dropped"] = [d["stage"] for d in halving.get("halving", {}).get("dropped", [])]
      for _, results in done:
        if results["stage"]["reused"]:
          record["reused"].append(results["stage"]["kind"])
        stage_seconds += results["wall_seconds"]["total"]
    if stopped is not None:
      record.update(status="stopped", stopped_stage=stopped[0].kind, stopped_at_step=stopped[1]["stopped_at_step"])
    else:
      best = _select_candidate(cfg, [r for _, r in done])
      stage, results = done[best]
      record["stages"][stage.kind] = stage.hash
      metric = cfg.train.best_metric
      record["tuning"] = {
          "metric": f"valid {metric}", **note, "chosen": stage.overrides,
          "candidates": [{"overrides": st.overrides, "valid": r["valid"][metric], "stage": st.hash,
                          "best_step": r.get("best_step")} for st, r in done]}
      if "from_record" in results:  # the recorded choice still wins: its recorded results
        if stage.overrides != own["tuning"]["chosen"]:
          raise ValueError(f"the record of {cell.key!r} chose {own['tuning']['chosen']}, its candidates' "
                           f"recorded values choose {stage.overrides}: the record is inconsistent")
        fields = {k: own.get(k) for k in RESULT_FIELDS}
      else:
        fields = result_fields(results)
      if own is not None:  # the grid's cost as recorded (its pretraining's included) and the extension's
        stage_seconds = (own.get("stage_wall_seconds") or 0.0) + sum(
            r["wall_seconds"]["total"] for _, r in done if "from_record" not in r)
      record.update(status="done", stage_wall_seconds=stage_seconds, **fields)
      if pretrain is not None:
        record["pretrain"] = {"valid": pretrain["valid"], "test": pretrain["test"],
                              "best_step": pretrain.get("best_step"), "budget": pretrain.get("budget"),
                              "host": pretrain.get("host")}
  except Exception as e:  # noqa: BLE001 -- a failing cell is recorded and the study goes on
    tail = traceback.format_exc()[-ERROR_TAIL_CHARS:]
    record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=tail)
    log.error("cell %d %s failed: %s", cell.index, cell.key, record["error"])
  record["wall_seconds"] = time.time() - t_start
  record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return record


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
  """The git commit of the xrec checkout that runs and whether tracked files differ from it (each
  record carries it: a study carried across machines and sessions says which code made each cell);
  {"commit": None} outside a git checkout."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                            timeout=10, check=True).stdout.strip()
    status = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                            capture_output=True, text=True, timeout=10, check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return {"commit": None}
  return {"commit": commit, "dirty": bool(status.strip())}


# a done record's results of its chosen candidate (result_fields)
RESULT_FIELDS = ("valid", "test", "best_step", "trainable_params", "total_params", "stored_bytes", "budget",
                 "population", "item_overlap", "item_tables", "not_applicable", "test_rank", "serving", "host")


def result_fields(results: dict) -> dict:
  """A trained stage's results as its cell's record holds them (RESULT_FIELDS)."""
  budget = results.get("transfer") or {}
  return dict(valid=results["valid"], test=results["test"], best_step=results.get("best_step"),
              trainable_params=budget.get("trainable"), total_params=budget.get("total", results.get("param_count")),
              stored_bytes=budget.get("stored_bytes"), budget=results.get("budget"),
              population=results["protocol"].get("population"), item_overlap=budget.get("item_overlap"),
              item_tables=budget.get("item_tables"), not_applicable=budget.get("not_applicable"),
              test_rank=results.get("per_user", {}).get("test_rank"), serving=serving_cost(results),
              host=results.get("host"))


def complete(tuning: dict, extend: int) -> bool:
  """Whether a record's tuning is final under tune.extend_at_edge = `extend`: its choice is inside
  its grid, or the grid was extended that many times."""
  return not runindex.grid_edges(tuning) or len(tuning.get("extended") or ()) >= extend


def recorded_tuning(records: dict | None, tuning: list[Stage], extend: int = 0) -> dict | None:
  """The done record of the tuning seed's own cell (it planned exactly `tuning`'s stages: the same
  prerequisites and grid) whose choice is final under tune.extend_at_edge = `extend`, or None."""
  if not records or not tuning:
    return None
  planned = [st.hash for st in tuning]
  return next((r for r in records.values() if r.get("status") == "done" and r.get("planned") == planned
               and (r.get("tuning") or {}).get("chosen") is not None and complete(r["tuning"], extend)), None)


def recorded_grid(config, stages_dir: str, records: dict | None, key: str, planned: list) -> dict | None:
  """A carried cell that tunes itself, run again (tune.extend_at_edge raised since its record):
  {"tuning": its record's, "done": [(stage, results)] of the candidates it chose among, their
  results read from the record (valid metric and best step, marked "from_record"), **the record}
  when its done record planned the same stages; else None (its grid trains)."""
  own = (records or {}).get(key)
  if not own or own.get("status") != "done" or own.get("planned") != planned:
    return None
  tuning, metric = own.get("tuning") or {}, config.train.best_metric
  if tuning.get("chosen") is None or len(tuning.get("candidates") or ()) < 1:
    return None
  done = []
  for c in tuning["candidates"]:
    stage = stage_for(config, stages_dir, c["overrides"])
    if stage.hash != c["stage"]:
      return None  # the record's candidate is another stage under this config: train the grid
    done.append((stage, {"valid": {metric: c["valid"]}, "best_step": c.get("best_step"), "from_record": own["key"],
                         "stage": {"reused": True, "kind": stage.kind}, "wall_seconds": {"total": 0.0}}))
  return {**own, "done": done}


def compare_rerun(records: dict, stage_hash: str, results: dict, metric: str) -> dict | None:
  """A pretraining trained again (its stage was not on this machine) against what the done records
  that used it saw: {"recorded_valid" (the distinct values), "valid", "difference" (the largest),
  "cells"}; None when no record used it.
  A difference beyond float noise (1e-4) is logged: the cells on either side of it transferred
  from different source models (other hardware or library versions)."""
  seen = [r for r in records.values() if r.get("status") == "done"
          and (r.get("stages") or {}).get("pretrain") == stage_hash and "pretrain" in r]
  if not seen:
    return None
  before = sorted({r["pretrain"]["valid"][metric] for r in seen})  # one value, unless it was trained apart before
  now = results["valid"][metric]
  difference = max((now - v for v in before), key=abs)
  hosts = sorted({runindex.host_label(r["pretrain"].get("host")) for r in seen})
  host = runindex.host_label(results.get("host"))
  if abs(difference) > 1e-4:
    log.warning("pretraining %s trained again reaches valid %s=%.4f, the records saw %s: the cells "
                "before and after it transfer from different source models (trained here on %s; the "
                "records' on %s)", stage_hash, metric, now, " / ".join(f"{v:.4f}" for v in before), host,
                " / ".join(hosts))
  return {"recorded_valid": before, "valid": now, "difference": difference, "cells": len(seen),
          "recorded_host_labels": hosts, "host_label": host}


def outcome(record: dict, metric: str) -> str:
  """One line of what a finished cell measured: its metric, the chosen values, its best step."""
  if record["status"] != "done":
    return f"{record['status']}" + (f": {record['error']}" if record.get("error") else "")
  tuning = record.get("tuning") or {}
  chosen, edges = tuning.get("chosen") or {}, runindex.grid_edges(tuning)
  return (f"done: valid {metric}={record['valid'].get(metric, float('nan')):.4f} test "
          f"{metric}={record['test'].get(metric, float('nan')):.4f}, best step {record.get('best_step')}"
          + (", chosen " + ", ".join(f"{k}={v:g}" + (" (the grid's edge: the best value may lie outside it)"
                                                   if k in edges else "") for k, v in chosen.items())
             if chosen else "")
          + f" ({record['wall_seconds']:.0f} s)")


def serving_cost(results: dict) -> dict:
  """What serving the cell's model costs: params and evaluation users/s of the model a deployment
  would keep (a structurally pruned run: its smaller dense model)."""
  dense = (results.get("pruning") or {}).get("dense")
  if dense:
    return {"model": "pruned, dense", "params": dense["params"], "stored_bytes": dense["stored_bytes"],
            "eval_users_per_second": dense["eval_users_per_second"]}
  return {"model": "as trained", "params": results.get("param_count"),
          "eval_users_per_second": (results.get("throughput") or {}).get("eval_users_per_second")}


def _cached(config, cell: Cell, workdir: str, previous: dict | None, trust_records: bool = False,
            records: dict | None = None) -> bool:
  """A cell is skipped when its last record is done and its stages (same hashes) still exist; with
  `trust_records` (a study carried to another machine by its records, launch.py --continue_from)
  when its last record is done and planned the stages this config plans, present or not. A cell
  that reuses another seed's choice (tune.seed) is judged by that seed's final record in `records`
  (every cell's last) when there is one: it runs again when that choice is another."""
  if not previous or previous.get("status") != "done":
    return False
  stages_dir = os.path.join(workdir, STAGES_DIR)
  try:
    cfg = apply_overrides(config, cell.overrides)
    prereq, candidates, _ = plan_stages(cfg, stages_dir)
    tuning = tuning_stages(cfg, stages_dir, candidates)
  except Exception:  # noqa: BLE001 -- an invalid cell is not cached; run_cell records why
    return False
  planned, tuned = previous.get("planned") or [], previous.get("tuning") or {}
  extend = int(cfg.tune.extend_at_edge)
  source = recorded_tuning(records, tuning, extend) if trust_records else None
  if source is not None:  # the tuning seed's final choice (its grid extended since, perhaps)
    if source["tuning"]["chosen"] != tuned.get("chosen"):
      return False
    tuned = source["tuning"]
  elif not complete(tuned, extend):
    return False  # its choice sits at the grid's edge and this config extends the grid there
  extended = tuned.get("extended") or []
  if tuning:  # the tuning seed's stages, this cell's prerequisites and the one candidate it chose
    fixed = [st.hash for st in tuning] + _planned_hashes(prereq, [])
    chose = {st.hash for st in candidates}
    if tuned.get("chosen") in [e["overrides"] for e in extended]:  # beyond the grid (tune.extend_at_edge)
      chose.add(stage_for(cfg, stages_dir, tuned["chosen"]).hash)
    ok = planned[:-1] == fixed and planned[-1:] and planned[-1] in chose
  else:
    ok = planned == _planned_hashes(prereq, candidates)
  if trust_records:
    return bool(ok)
  dropped = set(previous.get("dropped") or ())  # candidates successive halving left behind
  return bool(ok) and all(os.path.exists(os.path.join(stages_dir, h, "results.json"))
                          for h in planned + list(previous.get("extended") or ()) if h not in dropped)


def tuning_stages(config, stages_dir: str, candidates: list[Stage]) -> list[Stage]:
  """With tune.seed = s >= 0, a cell of another seed reuses the values chosen on seed s: the stages
  to run first are seed s's cell's (its prerequisites and every grid candidate); [] when every seed
  tunes itself (tune.seed = -1), the cell is seed s's own, or there is nothing to choose."""
  s = int(config.tune.seed)
  if s < 0 or len(candidates) < 2 or config.seed == s:
    return []
  prereq, tuned, _ = plan_stages(tuning_config(config), stages_dir)
  return prereq + tuned


def tuning_config(config):
  """The config of the tuning seed's (tune.seed = s) cell: its few-shot users too when the sweep
  draws them with the seed (strategy_grid)."""
  s = int(config.tune.seed)
  return apply_overrides(config, {"seed": s, **({"data.fraction_seed": s} if config.data.fraction_seed == config.seed
                                                 else {})})


def check_study(config, module) -> None:
  """Every cell's names, values and protocol, before any data or file is touched: a misspelt
  field, an unknown strategy or a value out of range fails here, naming the cell."""
  for cell in cells_of(module):
    cell_config = apply_overrides(config, cell.overrides)
    try:
      loop.validate(cell_config)  # names (model, strategy, objective terms) and numeric ranges
      if cell_config.experiment.mode == "pretrain_transfer":
        loop.validate(experiment.pretrain_config(cell_config))
      experiment.check_transfer_protocol(cell_config)
      rungs(cell_config)  # tune.halving's settings
      encoder = models.model_class(cell_config.model.name)
      # the strategy applies to the encoder, and the terms it adds fit it (distill on BERT4Rec: no)
      for name, _ in _strategy_of(cell_config).terms:
        objectives.fitting_term(name, encoder.causal, encoder.__name__)
    except ValueError as e:
      raise ValueError(f"cell {cell.index} ({cell.key}): {e}") from e


# Fields a rerun may change in a workdir: how runs are driven and logged (never their results) and
# what only the experiment reads (strategies, grids, seeds: more cells, the finished ones reused)
SAFE_TO_CHANGE = experiment.UNHASHED_FIELDS + ("train.keep_checkpoints", "experiment", "tune")


def _dotted(tree) -> dict:
  return {path.replace("/", "."): v for path, v in common.flatten(tree).items()}


def _comparable(config) -> dict:
  """The config as stored in study.json (tuples as lists)."""
  return json.loads(json.dumps(config.to_dict()))


class ConfigConflict(ValueError):
  """The workdir's study was started with another config or on other data."""


def data_files(config, module=None) -> dict:
  """The fingerprint of every input file the study's cells read (a cell may override the data
  fields: a reproduction table over several datasets)."""
  files = fingerprint.fingerprint(config.data)
  for cell in cells_of(module) if module is not None and hasattr(module, "sweep") else ():
    files.update(fingerprint.fingerprint(apply_overrides(config, cell.overrides).data))
  return files


def check_same_config(workdir: str, config, module=None) -> None:
  """A workdir holds one config and one version of its data: a rerun with other values (beyond
  SAFE_TO_CHANGE) or with edited input files is refused with the differences, before any work."""
  path = os.path.join(workdir, runindex.STUDY_FILE)
  if not os.path.isfile(path):
    return
  study = runindex.read_study(workdir)
  stored = study.get("config")
  if stored is None:  # a study from before configs were stored: this run records it
    return
  before, now = _dotted(stored), _dotted(_comparable(config))
  before = experiment.renamed(before)  # fields stored under an old name
  if study.get("data_files"):  # the data are known by content (checked below), not by their folder
    moved = {f for f, keep in experiment.LOCATION_FIELDS.items() if f in before and f in now
             and (keep is None or keep(os.path.normpath(str(before[f]))) == keep(os.path.normpath(str(now[f]))))}
  else:
    moved = set()

  def safe(field):
    if field in moved or (field not in before and now.get(field) == experiment.NEUTRAL_DEFAULTS.get(field, "<none>")):
      return True  # a moved data folder (same file names); a field added since, at its old behaviour
    return any(field == s or field.startswith(s + ".") for s in SAFE_TO_CHANGE)
  changed = sorted(f for f in set(before) | set(now) if not safe(f) and before.get(f, "<absent>") != now.get(f, "<absent>"))
  if changed:
    lines = [f"  {f}: {before.get(f, '<absent>')!r} -> {now.get(f, '<absent>')!r}" for f in changed]
    raise ConfigConflict(
        f"workdir {workdir!r} was started with another config ({len(changed)} field(s) differ):\n"
        + "\n".join(lines) + "\nuse a new --workdir for a different config (fields a rerun may change: "
        f"{', '.join(SAFE_TO_CHANGE)})")
  if "data_files" in study:  # studies from before data were fingerprinted: this run records them
    data_changes = fingerprint.changes(study["data_files"], data_files(config, module))
    if data_changes:
      raise ConfigConflict(
          f"workdir {workdir!r} holds results computed on other data ({len(data_changes)} input file(s) "
          "changed since):\n  " + "\n  ".join(data_changes) + "\nits finished cells would mix with cells on "
          "the new data: use a new --workdir for the new data (or restore the files)")


def check_launch(config, module, workdir: str, only: str | None) -> list[Cell]:
  """Everything a launch can check before any data is read or any file is written (each a user
  error): every cell's names, values and protocol, --only, the workdir's config and data, and that
  the workdir is a writable folder. Returns the cells to run."""
  check_study(config, module)
  chosen = select(cells_of(module), only)
  check_same_config(workdir, config, module)
  runindex.check_writable(workdir)
  return chosen


def run_study(config, module, workdir: str, only: str | None = None, config_file: str = "",
              config_arg: str | None = None, trust_records: bool = False) -> dict:
  """Runs the sweep's cells (all, or `only` one) in order; returns {"ran", "cached", "failed", "stopped"}
  counts and writes WORKDIR/study.json and WORKDIR/runs.jsonl. The config check and the write of
  study.json happen together under the study lock, so two launches started at once with different
  configs cannot both record their cells in one study: the second is refused (ConfigConflict).
  `trust_records` (or a workdir marked carried): done records count without their stages (a study
  carried by its records: see continue_from)."""
  cells = cells_of(module)
  layout = layout_of(module)
  chosen = check_launch(config, module, workdir, only)
  with launch_lock(workdir, only):
    trust_records = trust_records or carried(workdir)
    if is_main_process():
      with study_lock(workdir):
        check_same_config(workdir, config, module)
        origin = runindex.read_study(workdir).get("carried_from") if carried(workdir) else None
        runindex.write_study(workdir, {
            "config_file": config_file, "config_arg": config_arg, "layout": layout,
            "config": _comparable(config), "data_files": data_files(config, module),
            "cells": [dataclasses.asdict(c) for c in cells], **({"carried_from": origin} if origin else {})})
    return _run_cells(config, cells, chosen, layout, workdir, trust_records)


@contextlib.contextmanager
def study_lock(workdir: str):
  """An flock on WORKDIR/.study.lock, held only while a launch checks and records study.json (every
  launch of the workdir, --only or not, takes the same one)."""
  with runindex.exclusive_lock(os.path.join(workdir, ".study.lock")):
    yield


class WorkdirInUse(RuntimeError):
  """Another live launch holds this workdir (or this cell of it)."""


@contextlib.contextmanager
def launch_lock(workdir: str, only: str | None = None):
  """One launch per workdir (per cell with --only, so that a cluster can run a study's cells as
  separate jobs; they share stages through the stage locks). The lock is an flock on
  WORKDIR/.launch[.<cell>].lock holding the owner's pid and host: the kernel drops it when the
  owner dies, so a lock left by a killed launch is taken over. A second live launch fails at once
  naming the owner. Within one multi-process job only the main process takes it."""
  if not is_main_process():
    yield
    return
  name = ".launch.lock" if only is None else f".launch.{hashlib.sha256(str(only).encode()).hexdigest()[:12]}.lock"
  path = os.path.join(workdir, name)
  handle = open(path, "a+")
  try:
    try:
      fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      handle.seek(0)
      try:
        owner = json.loads(handle.read() or "{}")
      except json.JSONDecodeError:
        owner = {}
      raise WorkdirInUse(f"workdir {workdir!r} is in use by pid {owner.get('pid', '?')} on host "
                         f"{owner.get('host', '?')} (since {owner.get('started', '?')}); wait for it to finish "
                         "or use another --workdir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds"), "only": only}))
    handle.flush()
    yield
  finally:
    handle.close()  # releases the lock


def _run_cells(config, cells, chosen, layout, workdir, trust_records: bool = False) -> dict:
  is_main = is_main_process()
  previous = latest_runs(workdir)
  counts = {"ran": 0, "cached": 0, "failed": 0, "stopped": 0}
  for cell in chosen:
    if _cached(config, cell, workdir, previous.get(cell.key), trust_records, latest_runs(workdir)):
      counts["cached"] += 1
      continue
    log.info("cell %d (of 0..%d): %s", cell.index, len(cells) - 1, cell.key)
    record = run_cell(config, cell, workdir, layout, latest_runs(workdir) if trust_records else None)
    log.info("cell %d %s", cell.index, outcome(record, config.train.best_metric))
    if is_main:
      runindex.append_run(workdir, record)
    counts["ran"] += 1
    counts["failed"] += record["status"] == "failed"
    counts["stopped"] += record["status"] == "stopped"
  log.info("study %s: %s", workdir, counts)
  if len(cells) == 1 and is_main:  # a one-cell study: its results also at WORKDIR/results.json
    record = latest_runs(workdir).get(cells[0].key)
    stage = (os.path.join(workdir, STAGES_DIR, record["stages"][_trained_kind(record)], "results.json")
             if record and record.get("status") == "done" else "")
    if os.path.isfile(stage):  # a carried study's done cell has its record here, not its stage
      with open(stage) as f:
        runindex.write_json_atomic(os.path.join(workdir, "results.json"), json.load(f))
  return counts


def _trained_kind(record: dict) -> str:
  return next(k for k in ("single", "transfer") if k in record["stages"])


def study_of(module, config):
  """The study a launch runs (there is one runner): the config file's sweep() when it has one;
  for a pretrain -> transfer config, one cell per experiment.strategies; otherwise one cell, the
  config itself."""
  if hasattr(module, "sweep"):
    return module
  mode = config.experiment.mode
  if mode not in experiment.MODES:
    raise ValueError(f"Unknown experiment.mode {mode!r}; valid: {list(experiment.MODES)}")
  if mode == "pretrain_transfer":
    return implicit_study(config)
  return types.SimpleNamespace(sweep=lambda: iter([{}]), __file__=getattr(module, "__file__", "config"),
                               metrics=lambda: {"metrics": ("ndcg@10", "hr@10"), "rows": "model.name",
                                                "columns": ()})


def implicit_study(config):
  """A pretrain -> transfer config without sweep(): one cell per experiment.strategies (the
  config's own seed), one column; the same runner, stages, tuning and report as any study."""
  if not config.experiment.strategies:
    raise ValueError("experiment.strategies is empty; name at least one transfer strategy")
  strategies = list(config.experiment.strategies)

  def sweep():
    for strategy in strategies:
      yield {"transfer.strategy": strategy}

  def metrics():
    return {"metrics": ("ndcg@10", "hr@10"), "columns": ()}

  return types.SimpleNamespace(sweep=sweep, metrics=metrics, __file__="experiment.strategies")


SEEDS = (0, 1, 2, 3, 4)  # the protocol's default: >= 5 paired replicates per table cell


def strategy_grid(strategies, field: str, values, seeds=SEEDS):
  """Cells strategy x `field` value x seed, in that nesting (seed outermost).

  The seed also picks the few-shot users (`data.fraction_seed`), so each seed is
  one paired replicate for the significance tests of xrec.report.
  """
  for seed in seeds:
    for value in values:
      for strategy in strategies:
        yield {"transfer.strategy": strategy, field: value, "seed": seed, "data.fraction_seed": seed}


# Budgets of the real-data studies (experiments/real_data). Both pretrain to convergence as the
# reproduction does (experiments/reproduce: up to 200 epochs, early stopping after 10 evaluations
# without gain; every record says whether the best step was the last), so that no transfer cell
# starts from a source model cut while improving (the earlier 20-epoch CPU preset reached 0.02
# valid NDCG@10 on ML-1M's source where converged SASRecs reach 0.15-0.18). The model is SASRec's
# reference-code recipe (block and item init of SASRec+'s code, which learns fastest of the
# reproduction's ML-1M rows: experiments/reproduce/README.md). "full" is the paper shape for an
# accelerator (max_len 200, 2,000 target steps); "cpu" halves the windows (max_len 100) and gives
# 1,500 target steps, with validation every 50 and early stopping after 5, for 2 cores.
# Target cells are also evaluated at these steps before the first regular evaluation: fine-tuning
# on few users overfits within tens of steps (5% of ML-1M cross-region's target is 164 users, 1.3
# steps an epoch: a 50-step cadence is 38 epochs, and fine-tuning peaked at its first evaluation).
EARLY_EVALS = (10, 20, 30, 40)
REAL_DATA_PRESETS = {
    "full": dict(pretrain_epochs=200.0, pretrain_eval_every=200, target_steps=2000, eval_every=100,
                 eval_at=EARLY_EVALS, max_len=200, embed_dim=64, mlp_dim=64, block="reference", item_init_std=0.02),
    "cpu": dict(pretrain_epochs=200.0, pretrain_eval_every=100, target_steps=1500, eval_every=50,
                eval_at=EARLY_EVALS, max_len=100, embed_dim=64, mlp_dim=64, block="reference", item_init_std=0.02),
}


def config_args(arg, valid: tuple[str, ...]) -> set[str]:
  """`name.py:a,b` -> {"a", "b"}; an argument outside `valid` (or two presets) fails, listing them."""
  args = {a for a in (arg or "").split(",") if a}
  unknown = sorted(args - set(valid))
  if unknown:
    raise ValueError(f"Unknown config argument(s) {unknown}; valid (comma-separated): {list(valid)}")
  if len(args & set(REAL_DATA_PRESETS)) > 1:
    raise ValueError(f"pick one budget preset of {list(REAL_DATA_PRESETS)}, got {sorted(args)}")
  return args


REAL_DATA_SCENARIOS = ("ml1m_cross_region", "ml1m_cross_genre", "cross_app")


def real_data_scenario(arg, folder: str):
  """The config of a real-data family study (experiments/real_data/<family>.py:<scenario>[,args]):
  the first argument names the scenario study file in `folder` (REAL_DATA_SCENARIOS), the rest go
  to its get_config (cpu / full, swap, first, a file layout)."""
  scenario, *rest = (arg or "").split(",")
  if scenario not in REAL_DATA_SCENARIOS:
    raise ValueError(f"name the scenario first, e.g. ':ml1m_cross_region,cpu'; got {scenario!r}; "
                     f"valid: {list(REAL_DATA_SCENARIOS)}")
  return load_config_module(os.path.join(folder, scenario + ".py")).get_config(",".join(rest) or None)


def strategy_variants_grid(rows, field: str, values, seeds=SEEDS):
  """Cells (strategy, its own overrides) x `field` value x seed (seed outermost): rows are
  (strategy, {dotted field: value}) pairs, so one strategy may appear as several variants (name the
  varied field as the layout's row_detail)."""
  for seed in seeds:
    for value in values:
      for strategy, extra in rows:
        yield {"transfer.strategy": strategy, **extra, field: value, "seed": seed, "data.fraction_seed": seed}


# The study argument of the real-data configs that pretrains once for every seed (as_transfer_study).
ONE_PRETRAINING = "one_pretraining"


def as_transfer_study(c, preset: str = "full", lr_grid=(3e-4, 1e-3, 3e-3), one_pretraining: bool = False):
  """Turns a scenario config (splits `source`, `target`) into a pretrain -> transfer study cell
  under the fixed protocol, with the budgets of REAL_DATA_PRESETS[preset]: early-stopped
  pretraining, the same target budget in optimizer steps for every strategy and fraction (early
  stopping on validation), learning rates tuned on validation from `lr_grid` (on seed 0, with
  successive halving), evaluation on all target users, quiet runs.

  By default each seed pretrains its own source model (the seeds' spread includes the
  pretraining's); `one_pretraining` pretrains once, with seed 0, and every seed's cells transfer
  from that one model (the seeds then vary the target side: its training users, the fresh
  parts' init, the batches), as a team reusing one released checkpoint does, for a fifth of the
  pretraining cost at 5 seeds. The report says which (its pretraining section)."""
  if preset not in REAL_DATA_PRESETS:
    raise ValueError(f"Unknown budget preset {preset!r}; valid: {list(REAL_DATA_PRESETS)}")
  b = REAL_DATA_PRESETS[preset]
  if one_pretraining:  # the seed and the fraction seed are all a cell's seed changes in its pretraining
    c.experiment.pretrain.seed = 0
    c.experiment.pretrain.data = {"fraction_seed": 0}
  c.experiment.mode = "pretrain_transfer"
  c.experiment.source_domain, c.experiment.target_domain = "source", "target"
  c.experiment.pretrain.train.update(dict(num_epochs=b["pretrain_epochs"], batch_size=128,
                                          eval_every_steps=b["pretrain_eval_every"],
                                          checkpoint_every_steps=b["pretrain_eval_every"], early_stopping_patience=10,
                                          eval_at_steps=()))
  c.model.update(dict(max_len=b["max_len"], embed_dim=b["embed_dim"], item_init_std=b["item_init_std"]))
  c.model.sasrec.update(dict(mlp_dim=b["mlp_dim"], block=b["block"]))
  c.train.update(dict(num_steps=b["target_steps"], batch_size=128, eval_every_steps=b["eval_every"],
                      eval_at_steps=b["eval_at"],
                      checkpoint_every_steps=max(b["eval_every"], 200), early_stopping_patience=5,
                      progress_bar=False))
  c.data.eval_population = "all"
  # tune once (the grid runs on seed 0's cell, the other seeds train its choice: recorded per
  # record and in the report's caption) with successive halving (every learning rate to a third
  # of the budget, the best one on to the whole): what makes 5 seeds affordable on 2 cores; a choice
  # at the grid's edge trains rates beyond it, one at a time, up to two (on ML-1M cross-region 9 of
  # the first 11 cells chose an edge of the grid, scratch on all users with a clear trend, and 6 of the
  # 15 trained rows the edge of the once-extended grid, adapter and lora among them:
  # experiments/real_data/ml1m_cross_region_history.md; that study ran with one)
  c.tune.update(dict(lr=tuple(lr_grid), seed=0, halving=3, rungs=1, extend_at_edge=2))
  return c


def parallel_jobs(config, module, workdir: str, trust_records: bool = False) -> list:
  """The cells a `--jobs N` launch still has to run (not cached), each with the hashes of its
  prerequisite stages and the cells to finish first: the tuning seed's own cell, when it runs in
  this launch, before the cells that reuse its choice (tune.seed), so that they read its final
  record rather than train its grid beside it (xrec/train/parallel.py schedules by both)."""
  from xrec.train import parallel
  previous = latest_runs(workdir)
  trust_records = trust_records or carried(workdir)
  stages_dir = os.path.join(workdir, STAGES_DIR)
  pending = []  # (cell, prerequisite hashes, its planned stages, the tuning seed's planned stages)
  for cell in cells_of(module):
    if _cached(config, cell, workdir, previous.get(cell.key), trust_records, previous):
      continue
    cfg = apply_overrides(config, cell.overrides)
    try:
      prereq, candidates, _ = plan_stages(cfg, stages_dir)
      tuning = tuning_stages(cfg, stages_dir, candidates)
    except Exception:  # noqa: BLE001 -- an invalid cell runs (and fails) on its own; run_cell records why
      prereq, candidates, tuning = [], [], []
    pending.append((cell, tuple(st.hash for st in prereq), _planned_hashes(prereq, candidates),
                    [st.hash for st in tuning]))
  return [parallel.Job(cell.index, cell.key, prereq,
                       tuple(other.index for other, _, planned, _ in pending if tuning and planned == tuning))
          for cell, prereq, _, tuning in pending]


def continue_from(records_dir: str, workdir: str, config, module=None) -> None:
  """launch.py --continue_from: a study carried to this machine by its records (RECORDS_DIR/study.json
  and runs.jsonl, e.g. the folder a study commits). The records are checked against this launch's
  config and data like any rerun's (check_same_config), then merged into WORKDIR: a cell's record
  is added when WORKDIR has none for it or an older one (finished_at), so a workdir's own newer
  records are kept. WORKDIR's study.json is marked `carried_from` and every later launch of it
  trusts its done records (carried), with the flag or without: their cells are not run again though
  their stages are not here; what the other cells need (a pretraining; nothing of a tuning grid a
  done record chose from) runs here. Files are replaced atomically under the study lock."""
  for name in (runindex.STUDY_FILE, runindex.RUNS_FILE):
    if not os.path.isfile(os.path.join(records_dir, name)):
      raise FileNotFoundError(f"--continue_from {records_dir!r} has no {name}: give the folder holding a "
                              f"study's {runindex.STUDY_FILE} and {runindex.RUNS_FILE}")
  check_same_config(records_dir, config, module)  # the records were made with this config and data
  runindex.check_writable(workdir)
  if os.path.abspath(records_dir) == os.path.abspath(workdir):
    return
  with study_lock(workdir):
    mine = latest_runs(workdir)
    added = [r for r in latest_runs(records_dir).values() if r["key"] not in mine
             or str(r.get("finished_at", "")) > str(mine[r["key"]].get("finished_at", ""))]
    lines = [json.dumps(r) for r in read_runs(workdir) + added]
    tmp = os.path.join(workdir, runindex.RUNS_FILE + ".tmp")
    with open(tmp, "w") as f:
      f.write("".join(line + "\n" for line in lines))
    os.replace(tmp, os.path.join(workdir, runindex.RUNS_FILE))
    have = os.path.isfile(os.path.join(workdir, runindex.STUDY_FILE))
    study = runindex.read_study(workdir if have else records_dir)
    runindex.write_study(workdir, {**study, "carried_from": os.path.abspath(records_dir)})
  log.info("--continue_from: %d record(s) carried from %s (%d done)", len(added), records_dir,
           sum(r.get("status") == "done" for r in added))


def carry_records(records_dir: str, workdir: str, config, module=None) -> None:
  """continue_from on the main process; every process of a multi-process job waits for it, so none
  reads the workdir's records before they are merged."""
  if is_main_process():
    continue_from(records_dir, workdir, config, module)
  import jax
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices("xrec: --continue_from")


def carried(workdir: str) -> bool:
  """Whether WORKDIR's study was carried by its records (continue_from): its done records count
  without their stages."""
  path = os.path.join(workdir, runindex.STUDY_FILE)
  if not os.path.isfile(path):
    return False
  return bool(runindex.read_study(workdir).get("carried_from"))


def finished_stages(workdir: str) -> set[str]:
  folder = os.path.join(workdir, STAGES_DIR)
  return {h for h in (os.listdir(folder) if os.path.isdir(folder) else ())
          if os.path.exists(os.path.join(folder, h, "results.json"))}
