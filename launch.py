"""xrec launcher: flags only; every launch is a study run by xrec/train/runner.py.

  python launch.py --config configs/sasrec_synthetic.py --workdir runs/x [--config.model.sasrec.num_layers=4]

A config with sweep() is a study (xrec/train/runner.py, docs/experiments.md): the whole grid runs
as cached stages under WORKDIR/stages/, indexed in WORKDIR/runs.jsonl, then WORKDIR/report/ is
written (python -m xrec.report WORKDIR does it alone). A config with
experiment.mode="pretrain_transfer" and no sweep() is the one-seed study of its
experiment.strategies; any other config is a one-cell study, whose results are also copied to
WORKDIR/results.json.

  python launch.py --config experiments/fraction_study/config.py --workdir runs/fraction --list
  python launch.py --config experiments/fraction_study/config.py --workdir runs/fraction [--only KEY|INDEX]

A study carried to another machine by its committed records (study.json and runs.jsonl) goes on
there without running its done cells again (their stages stay behind; the report needs only the
records):

  python launch.py --config CONFIG --workdir runs/x --continue_from experiments/<study>/<records folder>

Multi-host: when cluster variables are present (SLURM with several tasks, Open MPI,
Cloud TPU pods, or JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID),
jax.distributed.initialize() is called first; each process then feeds its slice
of every global batch. Two local CPU processes, e.g.:

  for i in 0 1; do JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=2 \
    JAX_COORDINATOR_ADDRESS=localhost:12355 JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$i \
    python launch.py --config configs/sasrec_synthetic.py --workdir runs/two & done; wait
"""

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:arg]).", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.json.")
flags.DEFINE_string("only", None, "Study: run only this cell (its key, or its index in --list).")
flags.DEFINE_bool("list", False, "Study: print the cells (index, key) and exit.")
flags.DEFINE_integer("jobs", 1, "Study: run this many cells at once, one worker process per CPU core "
                     "(single-threaded XLA) or per GPU, sharing stages through the stage locks.", lower_bound=1)
flags.DEFINE_string("continue_from", None, "Study: a folder with a study's study.json and runs.jsonl (e.g. the "
                    "records a study commits): WORKDIR starts from them when it has none, and a cell whose done "
                    "record planned the same stages is not run again though its stages are not on this machine.")
flags.mark_flags_as_required(["config", "workdir"])

_CLUSTER_VARS = ("JAX_COORDINATOR_ADDRESS", "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES",
                 "MEGASCALE_COORDINATOR_ADDRESS")


def in_cluster(env=os.environ) -> bool:
  if any(v in env for v in _CLUSTER_VARS):
    return True
  return int(env.get("SLURM_NTASKS", "1")) > 1


def start_distributed(env=os.environ) -> None:
  """jax.distributed.initialize(): from the cluster's own variables, or from JAX_COORDINATOR_ADDRESS
  + JAX_NUM_PROCESSES + JAX_PROCESS_ID (which jax itself does not read). CPU processes exchange
  collectives through gloo."""
  import jax
  if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  explicit = [v for v in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID") if v in env]
  if explicit and len(explicit) < 2:
    raise ValueError("set both JAX_NUM_PROCESSES and JAX_PROCESS_ID (with JAX_COORDINATOR_ADDRESS), "
                     f"or neither; got only {explicit}")
  if explicit:
    jax.distributed.initialize(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                               num_processes=int(env["JAX_NUM_PROCESSES"]), process_id=int(env["JAX_PROCESS_ID"]))
  else:
    jax.distributed.initialize()


def summary(results: dict) -> str:
  if "test" not in results:
    return json.dumps(results)
  protocol = {k: v for k, v in results["protocol"].items() if k != "population"}
  lines = [f"protocol: {json.dumps(protocol)}",
           f"evaluated on {results['protocol']['population']['description']}"]
  preferred = ("ndcg@10", "hr@10", "mrr@10", "ndcg@20", "hr@50")
  for split in ("valid", "test"):
    m = results[split]
    # the usual columns where eval.ks has them, else ndcg and hr at every K the run computed
    names = [k for k in preferred if k in m] or [f"{name}@{k}" for k in results["protocol"]["ks"]
                                                   for name in ("ndcg", "hr")]
    lines.append(f"{split:5s} " + "  ".join(f"{k}={m[k]:.4f}" for k in names if k in m))
  sampled = results["protocol"].get("sampled_negatives")
  if sampled:  # labelled apart: not comparable with the full ranking above
    for split in ("valid", "test"):
      m = results[split]
      lines.append(f"{split:5s} against {sampled['n']} {sampled['sampling']} sampled negatives: " + "  ".join(
          f"{k}={m[k]:.4f}" for k in (f"sampled_{n}" for n in names) if k in m))
  lines.append(f"params={results['param_count']:,}  best_step={results.get('best_step')}  "
               f"wall={results['wall_seconds']['total']:.1f}s  device={results['device_kind']}")
  return "\n".join(lines)


COMPILATION_CACHE_MAX_BYTES = 4 * 2**30  # the default folder's size cap (least recently used programs go)


def compilation_cache_dir(env=os.environ) -> str | None:
  """Where compiled programs persist between launches: JAX_COMPILATION_CACHE_DIR when set (empty:
  none), else $XDG_CACHE_HOME/xrec/jax (~/.cache/xrec/jax). A cell whose programs repeat another's
  (the other seeds, the learning-rate candidates, other budgets: the rate and the budget are inputs
  of the step, xrec/train/optimizer.py) loads them instead of compiling, in this launch, in a
  `--jobs` worker, or in a later launch; on an accelerator a model's step compiles for tens of
  seconds. JAX caches the programs that took at least 1 s to compile
  (JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS), keyed by the program, XLA's flags and the devices."""
  if "JAX_COMPILATION_CACHE_DIR" in env:
    return env["JAX_COMPILATION_CACHE_DIR"] or None
  base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "xrec", "jax")


def _compilation_cache() -> None:
  import jax
  path = compilation_cache_dir()
  if path and "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # ours: capped (JAX evicts the least recently used)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_compilation_cache_max_size", COMPILATION_CACHE_MAX_BYTES)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = path  # the --jobs workers inherit both
    os.environ["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(COMPILATION_CACHE_MAX_BYTES)
  logging.getLogger("xrec").info("compilation cache: %s", path or "off (JAX_COMPILATION_CACHE_DIR is empty)")


def _quiet_logs():
  """xrec's own progress lines on stderr; library INFO chatter (orbax, tfds) hidden."""
  from absl import logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)
  logging.getLogger("absl").addFilter(
      lambda r: "Using custom data configuration" not in r.getMessage())
  xrec_log = logging.getLogger("xrec")
  handler = logging.StreamHandler(sys.stderr)
  handler.setFormatter(logging.Formatter("%(asctime)s xrec: %(message)s", "%H:%M:%S"))
  xrec_log.addHandler(handler)
  xrec_log.setLevel(logging.INFO)
  xrec_log.propagate = False


# what a user gets wrong (a misspelt field, a value out of range, a missing file): one line on stderr
# and exit status 2, not a traceback; XREC_TRACEBACK=1 shows the traceback too
USER_ERRORS = (ValueError, KeyError, AttributeError, TypeError, FileNotFoundError, NotADirectoryError,
               IsADirectoryError, PermissionError, flags.Error)


def user_error(e: BaseException) -> str:
  """`e` as one readable line (ml_collections' "Did you mean" comes as a quoted repr)."""
  text = str(e.args[0]) if len(e.args) == 1 and isinstance(e.args[0], str) else str(e)
  text = text.strip("'\"").replace("\\n", " ").replace("\\'", "'").replace("\n", " ")
  if isinstance(e, AttributeError) and "Did you mean" in text:
    text = f"unknown config field {text}"
  return f"xrec: error: {text}"


def _fail(e: BaseException) -> int:
  if os.environ.get("XREC_TRACEBACK"):
    import traceback
    traceback.print_exception(e)
  print(user_error(e), file=sys.stderr, flush=True)
  return 2


def parse_flags(argv):
  """absl's flag parsing (the config file and its --config.* overrides, the last value of a field
  given twice winning), user errors as one line."""
  try:
    from xrec.config import last_flag_wins
    return flags.FLAGS(last_flag_wins(argv))
  except USER_ERRORS as e:
    sys.exit(_fail(e))


def main(argv):
  del argv
  _quiet_logs()
  _compilation_cache()
  if in_cluster():
    if flags.FLAGS.jobs > 1:  # the workers would inherit the cluster's process ids
      return _fail(ValueError(f"--jobs {flags.FLAGS.jobs} starts worker processes on one machine; this launch is "
                              "one process of a cluster job (its variables are set), which already runs "
                              "one cell per process: launch without --jobs"))
    start_distributed()
  from xrec.train import parallel, runner
  try:
    parallel.pin_worker()  # a --jobs worker on the CPU: its own core, a launch's arithmetic
    # config_flags hands over only the ConfigDict; sweep() / metrics() live in the file (`path[:arg]`)
    config_file, config_arg = runner.config_file_of(config_flags.get_config_filename(flags.FLAGS["config"]))
    module = runner.load_config_module(config_file)
    study = runner.study_of(module, flags.FLAGS.config)
    if not flags.FLAGS.list:
      if flags.FLAGS.continue_from:
        runner.carry_records(flags.FLAGS.continue_from, flags.FLAGS.workdir, flags.FLAGS.config, study)
      runner.check_launch(flags.FLAGS.config, study, flags.FLAGS.workdir, flags.FLAGS.only)
    else:
      runner.check_study(flags.FLAGS.config, study)
  except USER_ERRORS as e:  # found before any data is read; no file is written but the workdir folder
    return _fail(e)
  return run_study(study, config_file, config_arg)


def run_study(study, config_file: str, config_arg):
  from xrec.train import runner
  cells = runner.cells_of(study)
  if flags.FLAGS.list:
    print(runner.list_text(cells), flush=True)
    return
  try:
    if flags.FLAGS.jobs > 1 and flags.FLAGS.only is None:
      counts = run_parallel(study)
    else:
      counts = runner.run_study(flags.FLAGS.config, study, flags.FLAGS.workdir, only=flags.FLAGS.only,
                               config_file=config_file, config_arg=config_arg,
                               trust_records=bool(flags.FLAGS.continue_from))
  except (runner.WorkdirInUse, runner.ConfigConflict) as e:  # another launch got there first
    return _fail(e)
  print(f"study {flags.FLAGS.workdir}: {counts}", flush=True)
  if flags.FLAGS.only is None and runner.is_main_process():
    from xrec import report
    print(report.write_report(flags.FLAGS.workdir)["markdown"], flush=True)
    results = os.path.join(flags.FLAGS.workdir, "results.json")
    if len(cells) == 1 and os.path.exists(results):  # a one-cell study: the run's own summary
      with open(results) as f:
        print(summary(json.load(f)), flush=True)
  return 1 if counts["failed"] else 0  # the index holds each failure's error


def run_parallel(study) -> dict:
  """--jobs N: the cells not yet done, N at a time, each as `launch.py --only INDEX` (xrec/train/parallel.py)."""
  from xrec.train import parallel, runner
  with runner.launch_lock(flags.FLAGS.workdir):  # one --jobs launch per workdir; cells lock themselves
    jobs = runner.parallel_jobs(flags.FLAGS.config, study, flags.FLAGS.workdir, bool(flags.FLAGS.continue_from))
    cached = len(runner.cells_of(study)) - len(jobs)
    done = parallel.run_jobs(jobs, parallel.launch_command(sys.argv), flags.FLAGS.jobs,
                             lambda: runner.finished_stages(flags.FLAGS.workdir))
  records = runner.latest_runs(flags.FLAGS.workdir)
  statuses = [records.get(j.key, {}).get("status") for j in jobs]
  return {"ran": done["ran"], "cached": cached, "failed": statuses.count("failed") + sum(
      1 for j in jobs if j.key not in records), "stopped": statuses.count("stopped")}


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
