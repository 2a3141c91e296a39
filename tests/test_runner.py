"""Studies: a tiny sweep runs, is killed, resumes to the same table; cached stages; failures; launch.py."""

import copy
import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from conftest import tiny_config
from xrec.train import experiment, runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRATEGIES = ("scratch", "zero_shot")  # zero_shot loads the pretraining and only evaluates: cheap
SEEDS = (0, 1)


def study_config(data_dir):
  c = tiny_config(data_dir)
  c.experiment.mode = "pretrain_transfer"
  c.experiment.pretrain.train.update(dict(num_epochs=1.0, batch_size=16, eval_every_steps=4,
                                          checkpoint_every_steps=4))
  c.experiment.pretrain.optim.warmup_fraction = 0.2
  c.train.update(dict(num_steps=4, eval_every_steps=2, checkpoint_every_steps=2))
  return c


def cells(extra=()):
  out = [{"transfer.strategy": s, "data.user_fraction": 0.5, "seed": seed} for seed in SEEDS for s in STRATEGIES]
  return out + list(extra)


def module(extra=()):
  return types.SimpleNamespace(sweep=lambda: iter(cells(extra)),
                               metrics=lambda: {"metrics": ("ndcg@10",), "columns": "data.user_fraction"})


def table_of(workdir):
  from xrec import report
  report.write_report(workdir)
  return open(os.path.join(workdir, "report", "table_ndcg_at_10.md")).read()


def count_stage_runs(monkeypatch, kill_at=None):
  """Counts train_and_evaluate calls; the `kill_at`-th trains 5 steps (past its step-4 checkpoint)
  then dies like a killed process."""
  calls, killed = [], []
  real = experiment.train_and_evaluate

  def wrapped(config, workdir):
    calls.append(workdir)
    if len(calls) == kill_at and not killed:
      killed.append(workdir)
      c = copy.deepcopy(config)
      c.train.stop_after_steps = 5
      real(c, workdir)
      raise KeyboardInterrupt("simulated kill")
    return real(config, workdir)

  monkeypatch.setattr(experiment, "train_and_evaluate", wrapped)
  return calls


@pytest.fixture(scope="module")
def finished_study(data_dir, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("study") / "uninterrupted")
  counts = runner.run_study(study_config(data_dir), module(), wd)
  assert counts == {"ran": 4, "cached": 0, "failed": 0, "stopped": 0}
  return wd


def test_killed_study_resumes_to_the_same_table(finished_study, data_dir, tmp_path, monkeypatch):
  wd = str(tmp_path / "killed")
  # stage runs: scratch s0, pretrain s0, zero_shot s0, scratch s1, then killed while pretraining s1
  calls = count_stage_runs(monkeypatch, kill_at=5)
  with pytest.raises(KeyboardInterrupt):
    runner.run_study(study_config(data_dir), module(), wd)
  assert [r["key"] for r in runner.read_runs(wd)] == [runner.cell_key(c) for c in cells()[:3]]
  killed_stage = calls[4]
  assert not os.path.exists(os.path.join(killed_stage, "results.json"))

  calls.clear()
  counts = runner.run_study(study_config(data_dir), module(), wd)
  # finished cells are not run again; the killed pretraining resumes from its checkpoints
  assert counts == {"ran": 1, "cached": 3, "failed": 0, "stopped": 0}
  assert calls[0] == killed_stage and len(calls) == 2
  resumed = json.load(open(os.path.join(killed_stage, "results.json")))
  assert resumed["init"]["kind"] == "resume_workdir"
  assert table_of(wd) == table_of(finished_study)
  runs = runner.latest_runs(wd)
  assert {r["status"] for r in runs.values()} == {"done"}
  ft = runs[runner.cell_key(cells()[1])]  # zero_shot, seed 0: trained its pretraining before the kill
  assert ft["reused"] == [] and set(ft["stages"]) == {"pretrain", "transfer"} and ft["wall_seconds"] > 0
  assert runs[runner.cell_key(cells()[3])]["stages"]["pretrain"] == os.path.basename(killed_stage)
  assert ft["test"] == json.load(open(os.path.join(wd, "stages", ft["stages"]["transfer"], "results.json")))["test"]

  # a transfer-only change re-runs the transfer, never the pretraining it loads
  pre_results = os.path.join(wd, "stages", ft["stages"]["pretrain"], "results.json")
  mtime = os.path.getmtime(pre_results)
  calls.clear()
  changed = study_config(data_dir)
  changed.transfer.lr_mult = 0.5
  with pytest.raises(ValueError, match=r"was started with another config .*\n  transfer.lr_mult: 1.0 -> 0.5"):
    runner.run_study(changed, module(), wd, only=ft["key"])  # the workdir's config is not silently replaced
  variant = {**ft["overrides"], "transfer.lr_mult": 0.5}  # a new cell of the same study may change it
  counts = runner.run_study(study_config(data_dir), module([variant]), wd,
                           only=runner.cell_key(variant))
  assert counts["ran"] == 1 and len(calls) == 1
  after = runner.latest_runs(wd)[runner.cell_key(variant)]
  assert after["stages"]["pretrain"] == ft["stages"]["pretrain"] and after["reused"] == ["pretrain"]
  assert after["stages"]["transfer"] != ft["stages"]["transfer"]
  assert os.path.getmtime(pre_results) == mtime


def test_failing_and_stopped_cells_are_recorded_and_the_rest_complete(finished_study, data_dir, tmp_path,
                                                                       monkeypatch):
  wd = str(tmp_path / "moved")
  shutil.copytree(finished_study, wd)  # a moved study keeps its stage hashes
  # valid names and values that fail only when the model is built (3 heads do not divide 16 dims)
  bad = {"transfer.strategy": "scratch", "data.user_fraction": 0.5, "seed": 0, "model.sasrec.num_heads": 3}
  stopped = {"transfer.strategy": "scratch", "data.user_fraction": 0.5, "seed": 2, "train.stop_after_steps": 2}
  zero_shot = {"transfer.strategy": "zero_shot", "data.user_fraction": 0.25, "seed": 0}
  calls = count_stage_runs(monkeypatch)
  counts = runner.run_study(study_config(data_dir), module([bad, stopped, zero_shot]), wd)
  assert counts == {"ran": 3, "cached": 4, "failed": 1, "stopped": 1}
  assert len(calls) == 3  # bad, stopped, zero_shot's transfer (its pretraining is reused)
  runs = runner.latest_runs(wd)
  assert runs[runner.cell_key(bad)]["status"] == "failed"
  error = runs[runner.cell_key(bad)]["error"]
  assert "Traceback" in runs[runner.cell_key(bad)]["traceback"]
  assert runs[runner.cell_key(stopped)]["status"] == "stopped"
  assert runs[runner.cell_key(stopped)]["stopped_at_step"] == 2
  assert runs[runner.cell_key(zero_shot)]["status"] == "done"
  assert runs[runner.cell_key(zero_shot)]["trainable_params"] == 0
  from xrec import report
  md = report.write_report(wd)["markdown"]
  assert "| zero_shot |" in md and f"failed | {error[:40]}" in md
  assert f"| 5 | {runner.cell_key(stopped)} | stopped |" in md


def test_typo_in_a_sweep_field_fails_before_any_work(data_dir, tmp_path):
  wd = str(tmp_path / "typo")
  bad_metric = {"transfer.strategy": "scratch", "train.best_metric": "ndcg@7"}
  with pytest.raises(ValueError, match=r"cell \d+ \(.*best_metric=ndcg@7\): train.best_metric 'ndcg@7' is not computed"):
    runner.run_study(study_config(data_dir), module([{"transfer.strategy": "scratch"}, bad_metric]), wd)
  assert not os.path.exists(wd)
  with pytest.raises(ValueError, match=r"transfer has no field 'strategie'; valid: \[.*'strategy'"):
    runner.run_study(study_config(data_dir), module([{"transfer.strategie": "lora"}]), wd)
  assert not os.path.exists(os.path.join(wd, "runs.jsonl"))


def test_select_by_key_or_index():
  all_cells = runner.cells_of(module())
  assert runner.select(all_cells, "2") == [all_cells[2]]
  assert runner.select(all_cells, all_cells[1].key) == [all_cells[1]]
  with pytest.raises(ValueError, match=r"valid: 0\.\.3"):
    runner.select(all_cells, "7")
  with pytest.raises(ValueError, match="no cell key"):
    runner.select(all_cells, "transfer.strategy=lora")
  with pytest.raises(ValueError, match="twice"):
    runner.cells_of(types.SimpleNamespace(sweep=lambda: [{"seed": 1}, {"seed": 1}]))


CONFIG_FILE = '''
import os, sys
sys.path.insert(0, {tests!r})
from test_runner import study_config, cells

def get_config(arg=None):
  return study_config(os.environ["XREC_DATA_DIR"])

def sweep():
  return cells([{{"transfer.strategy": "zero_shot", "data.user_fraction": 0.25, "seed": 1}}])

def metrics():
  return {{"metrics": ("ndcg@10",), "columns": "data.user_fraction"}}
'''


def test_launch_list_and_only(finished_study, tmp_path):
  cfg = tmp_path / "study_config.py"
  cfg.write_text(CONFIG_FILE.format(tests=os.path.join(ROOT, "tests")))
  wd = str(tmp_path / "study")
  shutil.copytree(finished_study, wd)
  env = dict(os.environ, PYTHONPATH=ROOT)  # with conftest's compilation cache
  launch = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={cfg}", f"--workdir={wd}"]
  out = subprocess.run(launch + ["--list"], capture_output=True, text=True, env=env, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.strip().splitlines()
  assert lines[0] == "0\ttransfer.strategy=scratch,data.user_fraction=0.5,seed=0"
  assert lines[4] == "4\ttransfer.strategy=zero_shot,data.user_fraction=0.25,seed=1"
  before = len(runner.read_runs(wd))
  key = "transfer.strategy=zero_shot,data.user_fraction=0.25,seed=1"
  out = subprocess.run(launch + [f"--only={key}"], capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "'ran': 1, 'cached': 0" in out.stdout
  runs = runner.read_runs(wd)
  assert len(runs) == before + 1 and runs[-1]["key"] == key and runs[-1]["status"] == "done"
  assert runs[-1]["reused"] == ["pretrain"]
  # the study's records alone, carried to a fresh workdir: every done cell counts, nothing trains
  records, carried = str(tmp_path / "records"), str(tmp_path / "carried")
  os.makedirs(records)
  for name in ("study.json", "runs.jsonl"):
    shutil.copyfile(os.path.join(wd, name), os.path.join(records, name))
  carry = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={cfg}", f"--workdir={carried}"]
  out = subprocess.run(carry + [f"--continue_from={records}"], capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "'ran': 0, 'cached': 5" in out.stdout and not os.path.exists(os.path.join(carried, "stages"))
  out = subprocess.run(carry + [f"--continue_from={tmp_path / 'none'}"], capture_output=True, text=True, env=env,
                       timeout=120)
  assert out.returncode == 2 and "has no study.json" in out.stderr


def test_a_finished_cells_line_names_its_metric_choice_and_a_choice_at_the_grids_edge():
  record = {"status": "done", "valid": {"ndcg@10": 0.15191}, "test": {"ndcg@10": 0.1578}, "best_step": 1400,
            "wall_seconds": 3619.2,
            "tuning": {"tuned": {"optim.lr": [3e-4, 1e-3, 3e-3]}, "chosen": {"optim.lr": 3e-3}}}
  line = runner.outcome(record, "ndcg@10")
  assert line == ("done: valid ndcg@10=0.1519 test ndcg@10=0.1578, best step 1400, chosen optim.lr=0.003 "
                  "(the grid's edge: the best value may lie outside it) (3619 s)")
  record["tuning"]["chosen"] = {"optim.lr": 1e-3}
  assert runner.outcome(record, "ndcg@10").endswith("chosen optim.lr=0.001 (3619 s)")
  record["tuning"] = {"tuned": {}, "chosen": {}}  # nothing tuned (zero_shot)
  assert runner.outcome(record, "ndcg@10").endswith("best step 1400 (3619 s)")
  assert runner.outcome({"status": "failed", "error": "ValueError: boom"}, "ndcg@10") == "failed: ValueError: boom"
