"""Nothing lost, nothing silently wrong (issue 12): a diverged run stops non-zero and keeps its last
good checkpoint; ..."""

import json
import os
import subprocess
import sys

import pytest

from conftest import COMPILE_FAST, tiny_config
from xrec.train import checkpoint as ckpt
from xrec.train.loop import DivergedError, train_and_evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _launch(workdir, *args, config="sasrec_synthetic.py"):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), "--config", os.path.join(ROOT, "configs", config),
                         "--workdir", str(workdir), *args], capture_output=True, text=True, cwd=ROOT, timeout=600,
                        env={**os.environ, "XLA_FLAGS": COMPILE_FAST})


TINY = ["--config.data.synthetic.num_source_users=120", "--config.data.synthetic.num_target_users=60",
        "--config.data.synthetic.num_source_items=200", "--config.data.synthetic.num_target_items=200",
        "--config.data.synthetic.mean_seq_len=12", "--config.data.synthetic.max_seq_len=30",
        "--config.model.max_len=20", "--config.model.embed_dim=16", "--config.model.sasrec.mlp_dim=32",
        "--config.model.vocab_multiple=8", "--config.train.num_steps=8", "--config.train.eval_every_steps=4",
        "--config.train.batch_size=16", "--config.eval.batch_size=128", "--config.train.progress_bar=False"]


def test_a_diverged_run_stops_at_the_first_bad_step_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  cfg.optim.lr = 1e10  # the loss is NaN within a few steps
  cfg.train.update(dict(checkpoint_every_steps=1, eval_every_steps=1, log_every_steps=100))
  with pytest.raises(DivergedError, match=r"not finite at step (\d+)") as err:
    train_and_evaluate(cfg, str(tmp_path / "w"))
  bad_step = int(err.value.args[0].split("not finite at step ")[1].split(";")[0])
  assert bad_step > 1
  # every step before it was checkpointed; none at or after it
  mgr = ckpt.latest_manager(str(tmp_path / "w"))
  assert max(mgr.all_steps()) == bad_step - 1
  mgr.close()
  assert f"checkpoints/{bad_step - 1} (step {bad_step - 1})" in str(err.value)
  assert not (tmp_path / "w" / "results.json").exists()
  with open(tmp_path / "w" / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert all(r["step"] < bad_step for r in rows)  # nothing evaluated on the diverged state


def test_a_diverged_study_cell_is_recorded_as_failed_and_the_launch_exits_non_zero(data_dir, tmp_path):
  proc = _launch(tmp_path / "w", *TINY, f"--config.data.data_dir={data_dir}", "--config.optim.lr=1e10")
  assert proc.returncode != 0
  assert "training diverged" in proc.stderr and "ndcg@10=1.0000" not in proc.stdout
  with open(tmp_path / "w" / "runs.jsonl") as f:
    (row,) = [json.loads(line) for line in f]
  assert row["status"] == "failed" and row["error"].startswith("DivergedError: training diverged")


@pytest.mark.parametrize("field,value", [
    ("eval.ks", "(0,10)"), ("eval.ks", "(-1,)"), ("train.eval_every_steps", "0"), ("train.eval_at_steps", "(0,10)"),
    ("train.checkpoint_every_steps", "0"), ("train.log_every_steps", "0"), ("optim.lr", "-1.0"),
    ("model.dropout", "1.5"), ("data.user_fraction", "0.0"), ("train.batch_size", "0"),
])
def test_an_invalid_value_is_refused_before_any_work(tmp_path, field, value):
  from xrec.config import check_ranges
  from xrec.defaults import base_config
  from xrec.train import runner
  config = base_config()
  with pytest.raises(ValueError, match=rf"{field}=.*must be (an integer|a number)"):
    check_ranges(runner.apply_overrides(config, {field: eval(value)}))


def test_invalid_values_are_refused_before_data_or_files_and_the_summary_reads_the_metrics_that_exist(data_dir, tmp_path):
  proc = _launch(tmp_path / "bad", *TINY, "--config.data.data_dir=" + str(tmp_path / "no_data"),
                 "--config.train.checkpoint_every_steps=0")
  assert proc.returncode != 0 and "train.checkpoint_every_steps=0: must be an integer in [1, 2147483647]" in proc.stderr
  assert not (tmp_path / "no_data").exists() and not (tmp_path / "bad" / "stages").exists()
  proc = _launch(tmp_path / "ks", *TINY, f"--config.data.data_dir={data_dir}", "--config.eval.ks=(5,10)")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "test  ndcg@10=" in proc.stdout and "hr@50" not in proc.stdout.split("protocol:")[-1]


@pytest.mark.parametrize("args,message", [
    (["--config.train.num_stepz=3"], 'xrec: error: unknown config field \'num_stepz\' Did you mean "num_steps"'),
    (["--config.transfer.strategy=foo"], "xrec: error: cell 0 (config): Unknown transfer strategy 'foo'; valid: ['adapter',"),
    (["--config.objective.terms=(('full_softmx',1.0),)"], "objective.terms entry ('full_softmx', 1.0): (name, weight) with a name in"),
])
def test_a_user_error_is_one_line_before_any_file_is_written(tmp_path, args, message):
  proc = _launch(tmp_path / "w", *args)
  assert proc.returncode == 2
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("xrec: error: ") and message in last and "Traceback" not in proc.stderr
  assert not (tmp_path / "w").exists()


def test_a_workdir_refuses_another_config_with_the_differences_and_accepts_safe_changes(data_dir, tmp_path):
  wd = tmp_path / "w"
  base = [*TINY, f"--config.data.data_dir={data_dir}"]
  first = _launch(wd, *base)
  assert first.returncode == 0, first.stderr[-3000:]
  results = (wd / "results.json").read_text()
  changed = _launch(wd, *base, "--config.optim.lr=5e-3", "--config.model.dropout=0.5")
  assert changed.returncode == 2 and "Traceback" not in changed.stderr
  assert "was started with another config (2 field(s) differ)" in changed.stderr
  assert "model.dropout: 0.2 -> 0.5" in changed.stderr and "optim.lr: 0.001 -> 0.005" in changed.stderr
  assert (wd / "results.json").read_text() == results and len((wd / "runs.jsonl").read_text().splitlines()) == 1
  safe = _launch(wd, *base, "--config.train.log_every_steps=3")  # how a run is logged, not what it computes
  assert safe.returncode == 0, safe.stderr[-3000:]
  assert "'cached': 1" in safe.stdout and (wd / "results.json").read_text() == results


def _data_files(folder):
  """Every file of the checkpoint's array store (OCDBT's `d/` folders: the data and the b-tree)."""
  return [os.path.join(r, f) for r, _, fs in os.walk(folder) for f in fs if os.path.basename(r) == "d"]


@pytest.fixture(scope="module")
def uninterrupted(data_dir, tmp_path_factory):
  """The tiny run's results, trained without interruption."""
  return train_and_evaluate(tiny_config(data_dir), str(tmp_path_factory.mktemp("whole")))


@pytest.mark.parametrize("damage", ["truncated_data", "empty_array_metadata", "empty_meta"])
def test_an_unreadable_latest_checkpoint_falls_back_to_the_previous_one(data_dir, tmp_path, damage, caplog,
                                                                         uninterrupted):
  cfg = tiny_config(data_dir)
  cfg.train.checkpoint_every_steps = 4
  whole = uninterrupted
  cfg.train.stop_after_steps = 9  # checkpoints at 4 and 8
  wd = tmp_path / "w"
  assert train_and_evaluate(cfg, str(wd)) == {"stopped_at_step": 9}
  newest = wd / "checkpoints" / "8"
  if damage == "truncated_data":
    # A write cut short: every data file loses its second half (damaging only one file was flaky:
    # the restore does not always read the bytes that were cut).
    paths = _data_files(newest / "state")
    assert paths
    for path in paths:
      with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
  else:
    open(newest / ("state/_METADATA" if damage == "empty_array_metadata" else "meta/metadata"), "w").close()
  cfg.train.stop_after_steps = 0
  with caplog.at_level("WARNING", logger="xrec"):
    resumed = train_and_evaluate(cfg, str(wd))
  assert f"checkpoint {newest} is unreadable" in caplog.text and "resuming from" in caplog.text
  assert (wd / "checkpoints" / "8.unreadable").is_dir()  # kept for inspection, not deleted
  assert resumed["test"] == pytest.approx({k: v for k, v in whole["test"].items() if k not in (
      "eval_seconds", "users_per_second")} | {k: resumed["test"][k] for k in ("eval_seconds", "users_per_second")})


def test_an_unreadable_best_checkpoint_is_an_error_naming_it(data_dir, tmp_path):
  cfg = tiny_config(data_dir)
  wd = tmp_path / "w"
  train_and_evaluate(cfg, str(wd))
  (step,) = [d for d in os.listdir(wd / "best") if d.isdigit()]
  open(wd / "best" / step / "params" / "_METADATA", "w").close()
  with pytest.raises(ValueError, match=rf"the best params at {wd}/best/{step} are unreadable .*retraining"):
    ckpt.restore_best_params(str(wd))


def test_a_second_launch_on_a_workdir_in_use_exits_at_once_naming_the_owner(data_dir, tmp_path):
  import socket
  from xrec.train import runner
  wd = tmp_path / "w"
  wd.mkdir()
  with runner.launch_lock(str(wd)):  # a live launch holds the workdir
    second = _launch(wd, *TINY, f"--config.data.data_dir={data_dir}")
    assert second.returncode == 2 and "Traceback" not in second.stderr
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in second.stderr.strip().splitlines()[-1]
    with runner.launch_lock(str(wd), only="3"):  # --only launches lock their own cell
      pass
  assert not (wd / "runs.jsonl").exists()
  # a lock left by a process that died is taken over
  dead = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, %r)\n"
                           "from xrec.train import runner\nimport os\n"
                           "with runner.launch_lock(%r): os._exit(0)" % (ROOT, str(wd))])
  assert dead.wait(timeout=120) == 0
  third = _launch(wd, *TINY, f"--config.data.data_dir={data_dir}")
  assert third.returncode == 0, third.stderr[-3000:]


def test_a_torn_last_index_line_is_ended_before_the_next_record_and_reported(tmp_path, caplog):
  from xrec import runindex
  runindex.append_run(str(tmp_path), {"key": "a", "status": "done"})
  with open(tmp_path / "runs.jsonl", "a") as f:
    f.write('{"key": "b", "sta')  # a crash mid-append
  runindex.append_run(str(tmp_path), {"key": "c", "status": "done"})
  with caplog.at_level("WARNING", logger="xrec"):
    records = runindex.read_runs(str(tmp_path))
  assert [r["key"] for r in records] == ["a", "c"]
  assert "runs.jsonl:2: skipping a torn line" in caplog.text


def test_an_unwritable_checkpoint_folder_fails_before_training(data_dir, tmp_path):
  wd = tmp_path / "w"
  wd.mkdir()
  (wd / "checkpoints").write_text("not a folder")  # (permission bits do not stop root, which CI may be)
  with pytest.raises(NotADirectoryError, match=rf"{wd}/checkpoints is a file, not a directory"):
    train_and_evaluate(tiny_config(data_dir), str(wd))
  assert not (wd / "metrics.jsonl").exists()  # nothing trained
  if os.geteuid() != 0:
    (wd / "checkpoints").unlink()
    (wd / "checkpoints").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="is not a writable directory"):
      train_and_evaluate(tiny_config(data_dir), str(wd))


def _metrics_of(workdir) -> dict:
  """Test metrics of every finished cell of a study, by cell key (timings left out)."""
  out = {}
  with open(os.path.join(workdir, "runs.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if row["status"] == "done":
        out[row["key"]] = {k: v for k, v in row["test"].items() if k not in ("eval_seconds", "users_per_second")}
  return out


STUDY = ["--config.experiment.pretrain.train.num_epochs=4", "--config.experiment.pretrain.train.batch_size=16",
         "--config.experiment.pretrain.train.eval_every_steps=5", "--config.experiment.pretrain.train.checkpoint_every_steps=5",
         "--config.data.user_fraction=0.5", "--config.tune.lr=(0.003,)",
         "--config.experiment.strategies=('scratch','full_finetune')"]


# Kill points by what the launch reports (deterministic in time, not fractions of a measured
# duration): each launch is SIGKILLed when its stderr shows the Nth line matching the pattern, so
# every rerun resumes from a different state: mid-training right after an evaluation (the save of
# that step not yet written), a second time from that resumed state, and (study) as the
# pretraining starts (a finished scratch cell before it) and as the transfer stage starts.
KILL_POINTS = {
    "run": [(r"step \d+ valid", 2), (r"step \d+ valid", 2)],
    "study": [(r"running pretrain stage", 1), ("running transfer stage", 1), (r"step \d+ valid", 2)],
}


def _launch_killed_at(wd, args, config, pattern, nth) -> bool:
  """Starts a launch and SIGKILLs it at the nth stderr line matching `pattern`; True if it was killed
  (False: it finished first)."""
  import re
  import signal
  proc = subprocess.Popen([sys.executable, os.path.join(ROOT, "launch.py"), "--config",
                           os.path.join(ROOT, "configs", config), "--workdir", str(wd), *args],
                          cwd=ROOT, env={**os.environ, "XLA_FLAGS": COMPILE_FAST}, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  seen = 0
  for line in proc.stderr:
    seen += bool(re.search(pattern, line))
    if seen >= nth:
      proc.send_signal(signal.SIGKILL)
      proc.wait(timeout=60)
      return True
  proc.wait(timeout=60)
  return False


@pytest.mark.parametrize("kind", ["run", "study"])
def test_sigkill_at_reported_points_then_rerun_ends_as_an_uninterrupted_run(data_dir, tmp_path, kind):
  """SIGKILL at points the launch reports (before a stage, mid-training after an evaluation and a
  checkpoint, between pretraining and transfer), rerun after each kill, then once to the end: the
  same test metrics, float for float, as one uninterrupted launch."""
  args = [*TINY, f"--config.data.data_dir={data_dir}", "--config.train.num_steps=24",
          "--config.train.eval_every_steps=6", "--config.train.checkpoint_every_steps=3"]
  config = "sasrec_synthetic.py" if kind == "run" else "transfer_synthetic.py"
  if kind == "study":
    args += STUDY
  whole = _launch(tmp_path / "whole", *args, config=config)
  assert whole.returncode == 0, whole.stderr[-3000:]
  wd = tmp_path / "killed"
  kills = sum(_launch_killed_at(wd, args, config, pattern, nth) for pattern, nth in KILL_POINTS[kind])
  last = _launch(wd, *args, config=config)
  assert last.returncode == 0, last.stderr[-3000:]
  assert kills == len(KILL_POINTS[kind])  # every launch was killed where it said it was
  assert _metrics_of(wd) == _metrics_of(tmp_path / "whole") and _metrics_of(wd)
