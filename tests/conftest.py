"""Test setup: 4 simulated CPU devices (before JAX starts), a shared tiny synthetic dataset."""

import os
import sys
import tempfile

# Compile fast, on a machine whose compilation cache is empty (a fresh machine, CI): the suite's
# programs are tiny and compiled once or twice each, so compiling dominates. LLVM's optimisation
# level 0 for XLA:CPU's generated code (the suite 1,383 -> 958-1,098 s of pytest on 2 cores), and
# XLA:CPU's older emitters instead of its MLIR fusion emitters (reductions fused a little
# differently; a tiny training run 6.7 -> 4.6 s, compiling 3.5 -> 1.9 s, its metrics the same to
# the last bit): experiments/bench/README.md, "The test suite's time". The tests check what runs
# compute and report, never a speed; test_foundation_train's test_launch_end_to_end compiles one
# launch with XLA's defaults, as a user's run does. And single-threaded XLA (xrec.train.parallel's
# SINGLE_THREADED_XLA): pytest runs one worker per core, and tiny programs gain nothing from a thread
# pool that the other worker contends for (tests/test_experiment.py with 2 workers, warm cache,
# alternating: 71-78 s against 78-83 s).
COMPILE_FAST = ("--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false "  # also for launches tests start
                "--xla_cpu_multi_thread_eigen=false")
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {COMPILE_FAST}")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The tests, and every launch.py they start as a subprocess (which inherits this environment),
# compile the same tiny programs again and again: a persistent compilation cache shared by the
# session makes the repeats a file read (the robustness tests: 366 s -> 160 s on one core). XLA's
# flags and the devices are part of each entry's key; an entry cut short by a killed process or a
# concurrent writer fails to load and is compiled again (JAX warns and goes on).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "xrec_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """One dataset cache for the whole session (each tiny dataset is prepared once)."""
  path = str(tmp_path_factory.mktemp("datasets"))
  os.environ["XREC_DATA_DIR"] = path
  return path


def tiny_config(data_dir: str):
  """A SASRec run that takes seconds: 120 users, 200 items, 2 tiny blocks."""
  from xrec.defaults import base_config
  c = base_config()
  c.data.data_dir = data_dir
  c.data.synthetic.update(dict(num_source_users=120, num_target_users=60, num_source_items=200,
                               num_target_items=200, mean_seq_len=12.0, max_seq_len=30))
  c.model.update(dict(max_len=20, embed_dim=16, vocab_multiple=8))
  c.model.sasrec.update(dict(num_layers=2, num_heads=2, mlp_dim=32))
  c.model.bert4rec.update(dict(num_layers=2, num_heads=2, mlp_dim=32))
  # checkpoints at the evaluations (each save waits for orbax's writer: a warm tiny run 3.0 -> 2.6 s
  # against every 4 steps); tests that need other checkpoints set them
  c.train.update(dict(batch_size=16, num_steps=12, eval_every_steps=6, checkpoint_every_steps=6,
                      log_every_steps=1, progress_bar=False))
  c.optim.warmup_fraction = 0.15
  # one evaluation batch per split (60 target, 120 source users): one input width, so one evaluation
  # program per model instead of up to three (length buckets; tests/test_foundation_metrics.py covers
  # them with small batches): ~15% of a tiny run's time on a fresh machine
  c.eval.batch_size = 128
  c.mesh.data = 1
  c.mesh.model = 1
  return c


def jitted(fn, **static):
  """`fn` (a module's init or apply, a loss's gradient) as one compiled program, `static` keyword
  arguments bound (e.g. method="score_last"). Called eagerly, every JAX operation of a model is
  compiled on its own: a tiny encoder's forward and backward pass made 100-350 one-operation
  programs per test, most of such a test's time on a fresh machine."""
  import functools

  import jax
  return jax.jit(functools.partial(fn, **static) if static else fn)
