"""The run index of a study directory: one format, written by the runner (xrec/train/runner.py)
and read by the report (xrec/report).

  WORKDIR/study.json   {"config_file", "config_arg", "layout", "cells": [{"index", "key", "overrides"}]}
  WORKDIR/runs.jsonl   one JSON record per cell run, appended (docs/experiments.md lists the keys);
                       the last record of a key supersedes earlier ones (a rerun after a failure)
  WORKDIR/stages/      one folder per stage, named by the hash of its config
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os

import numpy as np

log = logging.getLogger("xrec")
STUDY_FILE = "study.json"
RUNS_FILE = "runs.jsonl"
STAGES_DIR = "stages"


def jsonable(x):
  """numpy scalars / 0-d arrays -> Python numbers, tuples -> lists, keys -> str (recursively)."""
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  if hasattr(x, "shape") and getattr(x, "shape", None) == ():
    return float(x)
  return x


def write_json_atomic(path: str, obj) -> None:
  """Write to a temp file and rename, so a crash never leaves a half-written result."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(jsonable(obj), f, indent=2, sort_keys=True)
    f.write("\n")
  os.replace(tmp, path)


WORKDIR_HINT = "xrec writes its checkpoints and results there: fix its permissions or choose another --workdir"


def check_writable(directory: str, hint: str = WORKDIR_HINT) -> None:
  """`directory` exists (created if needed) and takes a new file, or an error naming it and `hint`:
  checked before any work, so a run never trains and then fails (or hangs in a checkpoint write) at
  the end."""
  if os.path.exists(directory) and not os.path.isdir(directory):
    raise NotADirectoryError(f"{directory} is a file, not a directory; {hint}")
  try:
    os.makedirs(directory, exist_ok=True)
    probe = os.path.join(directory, f".xrec-write-probe-{os.getpid()}")
    with open(probe, "w") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as e:
    raise PermissionError(f"{directory} is not a writable directory ({e.strerror or e}); {hint}") from None


def write_study(workdir: str, study: dict) -> None:
  write_json_atomic(os.path.join(workdir, STUDY_FILE), study)


def read_study(workdir: str) -> dict:
  path = os.path.join(workdir, STUDY_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: {workdir!r} is no study directory "
                            "(run `python launch.py --config CONFIG --workdir DIR` first)")
  with open(path) as f:
    return json.load(f)


def read_runs(workdir: str) -> list[dict]:
  """Every record of runs.jsonl in order; a line cut by a kill mid-write is skipped."""
  path = os.path.join(workdir, RUNS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for number, line in enumerate(f, 1):
      line = line.strip()
      if line:
        try:
          records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill mid-write: that cell simply reruns
          log.warning("%s:%d: skipping a torn line (a write cut short): %.80s", path, number, line)
  return records


def latest_runs(workdir: str) -> dict[str, dict]:
  """The last record of each cell key (a rerun supersedes a failure)."""
  return {r["key"]: r for r in read_runs(workdir)}


def grid_edges(tuning: dict) -> list[str]:
  """The tuned fields of a record's `tuning` whose chosen value is the smallest or largest of a grid
  of two or more: the best value may lie outside the grid."""
  grid = tuning.get("tuned") or {}
  return [k for k, v in (tuning.get("chosen") or {}).items()
          if len(grid.get(k, ())) > 1 and v in (min(grid[k]), max(grid[k]))]


def host_label(host: dict | None) -> str:
  """Where a run trained, as far as it moves XLA:CPU's arithmetic (a record's `host`, written by
  xrec/train/loop.py: host): the CPU and the cores visible to the process."""
  if not host:
    return "host not recorded"
  cpu = f"{host.get('cpu') or 'unknown CPU'}, {host.get('cores_visible')} of {host.get('cores')} cores visible"
  if host.get("platform") not in (None, "cpu"):  # an accelerator's arithmetic is its own
    return f"{host.get('device_kind')} ({cpu})"
  return cpu


def append_run(workdir: str, record: dict) -> None:
  """One write of one line in append mode (processes of a cluster sweep can share the index),
  always on a fresh line: a torn last line (a crash mid-append) is ended first, so the new record
  is never glued onto it."""
  path = os.path.join(workdir, RUNS_FILE)
  with open(path, "a+b") as f:
    f.seek(0, os.SEEK_END)
    torn = False
    if f.tell() > 0:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
    f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode())


@contextlib.contextmanager
def exclusive_lock(path: str):
  """Waits for and holds an flock on the file `path` (created if needed); the kernel drops it if the
  holder dies, so a lock is never left behind by a killed process."""
  with open(path, "a") as handle:
    fcntl.flock(handle, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(handle, fcntl.LOCK_UN)
