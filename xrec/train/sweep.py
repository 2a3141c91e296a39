"""Studies: a config's `sweep()` grid run as cached, resumable pipelines, with a run index.

A config module may define

  sweep()    yields dicts of overrides, dotted field -> value, one per cell, e.g.
             {"transfer.strategy": "adapter", "data.user_fraction": 0.05, "seed": 1}
  metrics()  what the report's tables show: {"metrics": ("ndcg@10", ...), "columns": "data.user_fraction"}
             (optional keys "rows", default "transfer.strategy", and "seed", default "seed")

Each cell is the config with its overrides applied, run as a pipeline of stages
(xrec/train/experiment.py: `experiment.mode = "pretrain_transfer"` gives pretrain -> transfer with
the cell's `transfer.strategy`, "scratch" needing no pretraining; "single" gives one run). Every
stage lives in WORKDIR/stages/<hash>/ keyed by the config it depends on, so the pretraining shared
by every strategy and fraction of a seed runs once, a killed study resumes where it stopped and a
changed field re-runs only what depends on it.

  WORKDIR/study.json   the config file, its argument, the cells and the table layout
  WORKDIR/runs.jsonl   one line per cell run: key, overrides, status (done | failed | stopped),
                       metrics at the best validation step, wall time, stage hashes, error
  WORKDIR/stages/      the stages

`python -m xrec.report WORKDIR` makes the tables and plots (xrec/report).
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import importlib.util
import json
import logging
import os
import time
import traceback
from typing import Any

from xrec.train import experiment
from xrec.train import writer as W

log = logging.getLogger("xrec")
RUNS_FILE = "runs.jsonl"
STUDY_FILE = "study.json"
STAGES_DIR = "stages"
DEFAULT_LAYOUT = {"metrics": ("ndcg@10", "hr@10"), "rows": "transfer.strategy", "columns": (), "seed": "seed"}
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


def cell_key(overrides: dict[str, Any]) -> str:
  """`field=value,...` in the sweep's own order: stable across runs, readable in runs.jsonl."""
  return ",".join(f"{field}={_value_text(value)}" for field, value in overrides.items())


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
  """A copy of `config` with dotted fields set; an unknown field fails with the valid names."""
  c = copy.deepcopy(config)
  for field, value in overrides.items():
    *parents, leaf = field.split(".")
    node, walked = c, []
    for name in parents + [leaf]:
      if not hasattr(node, "keys") or name not in node:
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        where = ".".join(walked) or "the config"
        raise ValueError(f"sweep field {field!r}: {where} has no field {name!r}; valid: {valid}")
      if name != leaf:
        node = node[name]
      walked.append(name)
    if isinstance(node[leaf], tuple) and isinstance(value, list):
      value = tuple(value)  # sweeps may write lists where the config holds tuples
    try:
      node[leaf] = value
    except TypeError as e:
      raise TypeError(f"sweep field {field!r}: {e}") from e
  return c


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


def plan_stages(config, stages_dir: str) -> list[tuple[str, Any, dict[str, str]]]:
  """A cell's stages in order: (kind, the stage's own config, {dependency name: stage hash})."""
  mode = config.experiment.mode
  if mode not in experiment.MODES:
    raise ValueError(f"Unknown experiment.mode {mode!r}; valid: {list(experiment.MODES)}")
  if mode == "single":
    return [("single", experiment._single_run(config), {})]
  strategy = config.transfer.strategy
  if strategy == "scratch":  # loads nothing: no pretraining to wait for
    return [("transfer", experiment.transfer_config(config, strategy, ""), {})]
  pre = experiment.pretrain_config(config)
  pre_hash = experiment.stage_hash(pre)
  transfer = experiment.transfer_config(config, strategy, os.path.join(stages_dir, pre_hash))
  return [("pretrain", pre, {}), ("transfer", transfer, {"pretrain": pre_hash})]


def read_runs(workdir: str) -> list[dict]:
  path = os.path.join(workdir, RUNS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: that cell simply reruns
          log.warning("skipping a malformed line in %s", path)
  return records


def latest_runs(workdir: str) -> dict[str, dict]:
  """The last record of each cell key (a rerun supersedes a failure)."""
  return {r["key"]: r for r in read_runs(workdir)}


def _append_run(workdir: str, record: dict) -> None:
  # One write of one line in append mode: processes of a cluster sweep can share the index.
  with open(os.path.join(workdir, RUNS_FILE), "a") as f:
    f.write(json.dumps(record) + "\n")


def is_main_process() -> bool:
  import jax
  return jax.process_index() == 0


def _stage_hashes(stages) -> dict[str, str]:
  return {kind: experiment.stage_hash(cfg, deps) for kind, cfg, deps in stages}


def run_cell(config, cell: Cell, workdir: str) -> dict:
  """Runs one cell's stages; returns its run-index record (never raises for a failing cell)."""
  t_start = time.time()
  stages_dir = os.path.join(workdir, STAGES_DIR)
  record = {"key": cell.key, "index": cell.index, "overrides": cell.overrides, "status": "failed",
            "stages": {}, "reused": []}
  try:
    stages = plan_stages(apply_overrides(config, cell.overrides), stages_dir)
    record["stages"] = _stage_hashes(stages)
    results, stage_seconds = None, 0.0
    for kind, stage_config, deps in stages:
      results = experiment.run_cached_stage(stage_config, stages_dir, kind, deps)
      if "stopped_at_step" in results:  # train.stop_after_steps: resumes on the next run
        record.update(status="stopped", stopped_stage=kind, stopped_at_step=results["stopped_at_step"])
        break
      if results["stage"]["reused"]:
        record["reused"].append(kind)
      stage_seconds += results["wall_seconds"]["total"]
    else:
      budget = results.get("transfer") or {}
      record.update(status="done", valid=results["valid"], test=results["test"],
                    best_step=results.get("best_step"), trainable_params=budget.get("trainable"),
                    total_params=budget.get("total", results.get("param_count")),
                    stored_bytes=budget.get("stored_bytes"), stage_wall_seconds=stage_seconds)
  except Exception as e:  # noqa: BLE001 -- a failing cell is recorded and the study goes on
    tail = traceback.format_exc()[-ERROR_TAIL_CHARS:]
    record.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=tail)
    log.error("cell %d %s failed: %s", cell.index, cell.key, record["error"])
  record["wall_seconds"] = time.time() - t_start
  record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  return record


def _cached(config, cell: Cell, workdir: str, previous: dict | None) -> bool:
  """A cell is skipped when its last record is done and its stages (same hashes) still exist."""
  if not previous or previous.get("status") != "done":
    return False
  try:
    hashes = _stage_hashes(plan_stages(apply_overrides(config, cell.overrides), os.path.join(workdir, STAGES_DIR)))
  except Exception:  # noqa: BLE001 -- an invalid cell is not cached; run_cell records why
    return False
  return hashes == previous.get("stages") and all(
      os.path.exists(os.path.join(workdir, STAGES_DIR, h, "results.json")) for h in hashes.values())


def run_study(config, module, workdir: str, only: str | None = None, config_file: str = "",
              config_arg: str | None = None) -> dict:
  """Runs the sweep's cells (all, or `only` one) in order; returns {"ran", "cached", "failed", "stopped"}
  counts and writes WORKDIR/study.json and WORKDIR/runs.jsonl."""
  cells = cells_of(module)
  layout = layout_of(module)
  for cell in cells:  # a misspelt field fails before any work starts
    apply_overrides(config, cell.overrides)
  chosen = select(cells, only)
  is_main = is_main_process()
  os.makedirs(workdir, exist_ok=True)
  if is_main:
    W.write_json_atomic(os.path.join(workdir, STUDY_FILE), {
        "config_file": config_file, "config_arg": config_arg, "layout": layout,
        "cells": [dataclasses.asdict(c) for c in cells]})
  previous = latest_runs(workdir)
  counts = {"ran": 0, "cached": 0, "failed": 0, "stopped": 0}
  for cell in chosen:
    if _cached(config, cell, workdir, previous.get(cell.key)):
      counts["cached"] += 1
      continue
    log.info("cell %d/%d: %s", cell.index + 1, len(cells), cell.key)
    record = run_cell(config, cell, workdir)
    if is_main:
      _append_run(workdir, record)
    counts["ran"] += 1
    counts["failed"] += record["status"] == "failed"
    counts["stopped"] += record["status"] == "stopped"
  log.info("study %s: %s", workdir, counts)
  return counts


def strategy_grid(strategies, field: str, values, seeds):
  """Cells strategy x `field` value x seed, in that nesting (seed outermost).

  The seed also picks the few-shot users (`data.fraction_seed`), so each seed is
  one paired replicate for the significance tests of xrec.report.
  """
  for seed in seeds:
    for value in values:
      for strategy in strategies:
        yield {"transfer.strategy": strategy, field: value, "seed": seed, "data.fraction_seed": seed}


def as_transfer_study(c, pretrain_epochs: float):
  """Turns a scenario config (splits `source`, `target`) into a pretrain -> transfer study cell
  with the stage settings the real-data studies share (early-stopped pretraining, quiet runs)."""
  c.experiment.mode = "pretrain_transfer"
  c.experiment.source_domain, c.experiment.target_domain = "source", "target"
  c.experiment.pretrain.update(dict(num_epochs=pretrain_epochs, batch_size=128, eval_every_steps=200,
                                    checkpoint_every_steps=200, early_stopping_patience=10))
  c.train.update(dict(eval_every_steps=50, checkpoint_every_steps=200, progress_bar=False))
  return c
