"""`launch.py --jobs N`: a study's cells run by N worker processes at once, each one
`launch.py --only INDEX` pinned to its own CPU core (once JAX has started: pin_worker) with
single-threaded XLA (on a machine with N GPUs: one device each), sharing finished stages through
the stage locks like cells launched as separate cluster jobs.

One worker per core with single-threaded XLA is the fastest scheme measured on CPU here (two pinned
workers gave 1.46x the throughput of one process using both cores: XLA's own threads spent about
half their time in the kernel). The scheduler starts, at each free slot, the first cell in sweep
order whose prerequisite stages (a shared pretraining) are finished or not being run by another
worker, so no worker waits on a stage lock while other cells are ready, and whose `after` cells (the
tuning seed's own cell, for a cell that reuses its choice) have finished.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import subprocess
import sys
import threading

log = logging.getLogger("xrec")
# XLA:CPU on one thread. Every token must start with "--": XLA's flag parser stops at the first that
# does not, silently dropping the flags after it (`intra_op_parallelism_threads=1`, a TensorFlow
# option that earlier records pass too, is no XLA flag and did nothing but that).
SINGLE_THREADED_XLA = "--xla_cpu_multi_thread_eigen=false"


@dataclasses.dataclass
class Job:
  index: int
  key: str
  prereq: tuple[str, ...]  # stage hashes the cell needs before its own (a pretraining)
  after: tuple[int, ...] = ()  # cells to finish first (the tuning seed's own cell, whose choice it reuses)


def visible_gpus() -> int:
  """How many NVIDIA devices this machine shows (0 without nvidia-smi or with JAX_PLATFORMS=cpu)."""
  if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu" or not shutil.which("nvidia-smi"):
    return 0
  try:
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
  except (OSError, subprocess.SubprocessError):
    return 0
  return sum(1 for line in out.splitlines() if line.startswith("GPU "))


PIN_ENV = "XREC_PIN_CORE"  # a CPU worker's core, pinned once JAX has started (pin_worker)
CORES_AT_START_ENV = "XREC_CORES_AT_START"  # the cores JAX saw when it sized its thread pool


def worker_env(slot: int, gpus: int, env=os.environ) -> dict:
  """The environment of worker `slot`: its GPU, or single-threaded XLA and its own core on the CPU
  (round robin over the cores this launch may use), taken by pin_worker in the worker."""
  out = dict(env)
  if gpus:
    out["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
  else:
    out["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREADED_XLA).strip()
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [slot]
    out[PIN_ENV] = str(cores[slot % len(cores)])
  return out


def pin_worker(env=os.environ) -> int | None:
  """In a CPU worker (PIN_ENV set): start JAX's CPU client, then pin every thread of this process to
  the worker's core; returns the core (None elsewhere). Pinned before JAX starts, the worker would
  see one core, and XLA:CPU splits large reductions (a gradient summed over the batch) by the cores
  it sees at start: a cell would train another model in a worker than in a launch of its own.
  Pinned after, its thread pool is the machine's, its arithmetic a launch's, and it still runs on
  one core (2-core VM: the same steps per second either way; experiments/real_data/ml1m_cross_region_history.md)."""
  if not env.get(PIN_ENV) or not hasattr(os, "sched_setaffinity"):
    return None
  allowed = sorted(os.sched_getaffinity(0))
  try:
    core = int(env[PIN_ENV])
  except ValueError:
    core = None
  if core not in allowed:
    raise ValueError(f"{PIN_ENV}={env[PIN_ENV]!r} is not a core this process may use; valid: {allowed}")
  import jax  # noqa: PLC0415 -- only a worker pays for it here; launch.py imports it anyway
  os.environ[CORES_AT_START_ENV] = str(len(allowed))
  jax.devices()  # the CPU client and its thread pool, sized by the cores visible now
  pinned = set()
  while True:  # until a pass finds no new thread (one not yet pinned may have started another)
    tasks = set(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else {"0"}
    if tasks <= pinned:
      return core
    for task in sorted(tasks - pinned):
      try:
        os.sched_setaffinity(int(task), {core})
      except (ProcessLookupError, PermissionError):  # a thread that has just ended
        pass
      pinned.add(task)


def run_jobs(jobs: list[Job], command, num_workers: int, done_stages) -> dict:
  """Runs `command(index)` (an argv) for every job with at most `num_workers` at once; returns
  {"ran", "failed"} and each job's exit status. `done_stages()` -> set of finished stage hashes."""
  gpus = visible_gpus()
  pending, running, lock = list(jobs), {}, threading.Lock()
  codes, wake = {}, threading.Event()

  def ready(job: Job) -> bool:
    if any(j.index in job.after for j in (*pending, *running.values())):
      return False
    busy = {h for j in running.values() for h in j.prereq}
    finished = done_stages()
    return all(h in finished or h not in busy for h in job.prereq)

  def start(slot: int, job: Job):
    log.info("worker %d: cell %d %s", slot, job.index, job.key[:120])
    proc = subprocess.Popen(command(job.index), env=worker_env(slot, gpus))

    def wait():
      codes[job.index] = proc.wait()
      with lock:
        running.pop(slot)
        free.append(slot)
      wake.set()
    threading.Thread(target=wait, daemon=True).start()

  free = list(range(num_workers))
  while pending or running:
    with lock:
      while free and pending:
        job = next((j for j in pending if ready(j)), None)
        if job is None:
          break
        pending.remove(job)
        slot = free.pop(0)
        running[slot] = job
        start(slot, job)
    wake.wait(timeout=5.0)
    wake.clear()
  failed = sorted(i for i, c in codes.items() if c != 0)
  return {"ran": len(codes), "failed": len(failed), "failed_cells": failed, "codes": codes}


def launch_command(argv: list[str]):
  """index -> the argv of `launch.py --only index` with this launch's other arguments."""
  rest, skip = [], False
  for arg in argv[1:]:
    if skip:
      skip = False
      continue
    name = arg.lstrip("-").split("=", 1)[0]
    if name in ("jobs", "only"):
      skip = "=" not in arg
      continue
    rest.append(arg)
  return lambda index: [sys.executable, os.path.abspath(argv[0]), *rest, "--only", str(index)]
