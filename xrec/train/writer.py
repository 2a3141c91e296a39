"""Run outputs: per-step metrics as JSON lines and TensorBoard events, results.json, progress bar."""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

from xrec.runindex import jsonable as _jsonable, write_json_atomic  # noqa: F401 (re-exported)


class MetricWriter:
  """WORKDIR/metrics.jsonl ({"step", "split", "time", ...metrics}; time: seconds since the epoch when
  the row was written, for time-to-quality curves) + WORKDIR/tensorboard/ events.

  TensorBoard files are written by tensorboardX (no TensorFlow). On resume,
  lines after the resumed step are dropped, so the log reads like one run.
  """

  def __init__(self, workdir: str, resume_step: int | None = None, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    if resume_step is not None and os.path.exists(self.path):
      with open(self.path) as f:
        kept = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
      with open(self.path, "w") as f:
        f.writelines(kept)
    elif os.path.exists(self.path):
      os.remove(self.path)
    try:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:  # optional: JSON lines are always written
      self._tb = None

  def write(self, step: int, split: str, metrics: dict) -> None:
    if not self.enabled:
      return
    row = {"step": int(step), "split": split, "time": round(time.time(), 3), **_jsonable(metrics)}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float, np.floating, np.integer)):
          self._tb.add_scalar(f"{split}/{k.replace('@', '_at_')}", float(v), int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.flush()
      self._tb.close()


def progress_bar(total: int, initial: int, enabled: bool):
  """tqdm bar with ETA when attached to a terminal; a no-op object otherwise."""
  from tqdm import tqdm
  return tqdm(total=total, initial=initial, disable=not (enabled and sys.stderr.isatty()),
              unit="step", dynamic_ncols=True, desc="train")
