"""A study carried to another machine by its records (launch.py --continue_from): done cells are not
run again though their stages stayed behind, the tuning seed's choice is read from its record, a
pretraining trained again is compared with what the records saw, and each record names its code."""

import json
import os
import shutil
import subprocess
import sys
import types

import pytest

from conftest import tiny_config
from test_runner import study_config
from xrec.train import experiment, runner

SEEDS = (0, 1)


def _config(data_dir):
  c = study_config(data_dir)  # test_runner's tiny pretrain -> transfer study
  c.tune.update(dict(lr=(1e-3, 3e-3), seed=0))  # seed 0 tunes, seed 1 trains its choice
  return c


def _module(cells):
  return types.SimpleNamespace(sweep=lambda: iter(cells),
                               metrics=lambda: {"metrics": ("ndcg@10",), "columns": ()})


CELLS = [{"transfer.strategy": s, "seed": seed} for seed in SEEDS for s in ("scratch", "zero_shot", "full_finetune")]


def _records(workdir):
  return runner.latest_runs(workdir)


def _counting(monkeypatch):
  calls = []
  real = experiment.train_and_evaluate
  monkeypatch.setattr(experiment, "train_and_evaluate",
                      lambda config, workdir: calls.append(os.path.basename(workdir)) or real(config, workdir))
  return calls


@pytest.fixture(scope="module")
def finished(data_dir, tmp_path_factory):
  """A finished study and its records alone (what a study commits), as on another machine."""
  root = tmp_path_factory.mktemp("carry")
  wd = str(root / "first")
  assert runner.run_study(_config(data_dir), _module(CELLS), wd)["failed"] == 0
  records = str(root / "records")
  os.makedirs(records)
  for name in ("study.json", "runs.jsonl"):
    shutil.copyfile(os.path.join(wd, name), os.path.join(records, name))
  return wd, records


def test_records_name_their_code_and_host(finished):
  wd, _ = finished
  for record in _records(wd).values():  # where each cell and its source model trained (XLA:CPU's arithmetic)
    visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert record["host"]["cores_visible"] == visible and "isa" in record["host"]
    assert "pretrain" not in record or record["pretrain"]["host"] == record["host"]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  head = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True)
  if head.returncode != 0:
    pytest.skip("not a git checkout: records name no commit")
  for record in _records(wd).values():
    assert record["code"]["commit"] == head.stdout.strip() and isinstance(record["code"]["dirty"], bool)


def test_done_cells_are_not_run_again_without_their_stages(data_dir, finished, tmp_path, monkeypatch):
  wd, records = finished
  calls = _counting(monkeypatch)
  carried = str(tmp_path / "carried")
  runner.continue_from(records, carried, _config(data_dir), _module(CELLS))
  assert not os.path.exists(os.path.join(carried, "stages")) and runner.carried(carried)
  # without trusting the records every cell would run again: its stages are not here
  cell = runner.cells_of(_module(CELLS))[0]
  assert not runner._cached(_config(data_dir), cell, carried, _records(carried)[cell.key])
  counts = runner.run_study(_config(data_dir), _module(CELLS), carried, trust_records=True)
  assert counts == {"ran": 0, "cached": 6, "failed": 0, "stopped": 0} and not calls
  from xrec import report
  tables = [open(os.path.join(report.write_report(d) and d, "report", "table_ndcg_at_10.md")).read() for d in (wd, carried)]
  assert tables[0] == tables[1]
  # later launches of the carried workdir trust its records without the flag
  assert runner.run_study(_config(data_dir), _module(CELLS), carried)["cached"] == 6 and not calls
  # carried again: records merge (a workdir's own records kept, nothing added twice)
  with open(os.path.join(carried, "runs.jsonl"), "a") as f:
    f.write(json.dumps({"key": "other", "status": "failed"}) + "\n")
  lines = open(os.path.join(carried, "runs.jsonl")).read().splitlines()
  runner.continue_from(records, carried, _config(data_dir), _module(CELLS))
  assert open(os.path.join(carried, "runs.jsonl")).read().splitlines() == lines
  with pytest.raises(FileNotFoundError, match="no study.json"):
    runner.continue_from(str(tmp_path), str(tmp_path / "x"), _config(data_dir))
  other = _config(data_dir)
  other.model.dropout = 0.5  # records made with another config are refused before anything is copied
  with pytest.raises(runner.ConfigConflict, match="model.dropout"):
    runner.continue_from(records, str(tmp_path / "y"), other, _module(CELLS))
  assert not os.path.exists(str(tmp_path / "y"))


def test_a_one_cell_study_carries_without_its_stage(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.data.domain = "target"
  one = _module([{}])
  first = str(tmp_path / "first")
  assert runner.run_study(c, one, first)["ran"] == 1
  assert os.path.isfile(os.path.join(first, "results.json"))
  carried = str(tmp_path / "carried")
  runner.continue_from(first, carried, c, one)
  assert runner.run_study(c, one, carried)["cached"] == 1  # no stage here: no results.json copy, no crash
  assert not os.path.exists(os.path.join(carried, "results.json"))


def test_the_tuning_choice_and_the_pretraining_come_back_from_the_records(data_dir, finished, tmp_path, monkeypatch):
  wd, records = finished
  first = _records(wd)
  seed1 = next(r for r in first.values() if r["overrides"] == {"transfer.strategy": "full_finetune", "seed": 1})
  seed0 = next(r for r in first.values() if r["overrides"] == {"transfer.strategy": "full_finetune", "seed": 0})
  assert len(seed0["tuning"]["candidates"]) == 2  # seed 0 trained the grid; seed 1 only its choice
  # carried records in which seed 1's fine-tuning has not run yet
  partial = str(tmp_path / "records")
  os.makedirs(partial)
  shutil.copyfile(os.path.join(records, "study.json"), os.path.join(partial, "study.json"))
  with open(os.path.join(partial, "runs.jsonl"), "w") as f:
    for r in first.values():
      if r["key"] != seed1["key"]:
        f.write(json.dumps(r) + "\n")
  calls = _counting(monkeypatch)
  carried = str(tmp_path / "carried")
  runner.continue_from(partial, carried, _config(data_dir), _module(CELLS))
  counts = runner.run_study(_config(data_dir), _module(CELLS), carried)
  assert counts == {"ran": 1, "cached": 5, "failed": 0, "stopped": 0}
  # the pretraining (not on this machine) and seed 1's chosen candidate: not seed 0's grid
  assert calls == [seed1["stages"]["pretrain"], seed1["stages"]["transfer"]]
  again = _records(carried)[seed1["key"]]
  assert again["tuning"]["tuning_from_record"] == seed0["key"]
  assert again["tuning"]["chosen"] == seed0["tuning"]["chosen"] == seed1["tuning"]["chosen"]
  assert again["planned"] == seed1["planned"]
  timing = ("users_per_second", "eval_seconds")
  assert {k: v for k, v in again["test"].items() if k not in timing} == \
         {k: v for k, v in seed1["test"].items() if k not in timing}
  # the pretraining trained again, compared with what the records saw of it (same code, same machine)
  rerun = again["pretrain_rerun"]
  zero_shot = next(r for r in first.values() if r["overrides"] == {"transfer.strategy": "zero_shot", "seed": 1})
  assert rerun["cells"] == 1 and rerun["recorded_valid"] == [zero_shot["pretrain"]["valid"]["ndcg@10"]]
  assert abs(rerun["difference"]) <= 1e-6 and rerun["recorded_host_labels"] == [rerun["host_label"]]  # this machine


def test_compare_rerun_reports_a_different_source_model(caplog):
  records = {"a": {"status": "done", "stages": {"pretrain": "h"}, "pretrain": {"valid": {"ndcg@10": 0.20}}},
             "b": {"status": "done", "stages": {"pretrain": "other"}, "pretrain": {"valid": {"ndcg@10": 0.5}}}}
  with caplog.at_level("WARNING", logger="xrec"):
    rerun = runner.compare_rerun(records, "h", {"valid": {"ndcg@10": 0.21}, "host": {
        "cpu": "Test CPU", "cores": 2, "cores_visible": 1}}, "ndcg@10")
  assert rerun["cells"] == 1 and rerun["difference"] == pytest.approx(0.01)
  assert "different source models (trained here on Test CPU, 1 of 2 cores visible; the records' on host " \
         "not recorded)" in caplog.text
  assert runner.compare_rerun(records, "missing", {"valid": {"ndcg@10": 0.2}}, "ndcg@10") is None


def _interactions(path, lines=("1 1\n", "1 2\n", "2 2\n", "2 3\n")):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.writelines(lines)
  from xrec.defaults import base_config
  c = base_config()
  c.data.update(dict(name="interactions", domain="main"))
  c.data.files.update(dict(format="sasrec", path=str(path)))
  return c


def test_the_same_file_in_another_folder_is_the_same_stage(tmp_path):
  here = _interactions(str(tmp_path / "a" / "ratings.txt"))
  there = _interactions(str(tmp_path / "b" / "c" / "ratings.txt"))
  assert experiment.stage_hash(here) == experiment.stage_hash(there)
  renamed = _interactions(str(tmp_path / "b" / "other.txt"))  # the name makes per-file keys: another stage
  assert experiment.stage_hash(renamed) != experiment.stage_hash(here)
  edited = _interactions(str(tmp_path / "d" / "ratings.txt"), lines=("1 1\n", "1 3\n", "2 2\n", "2 3\n"))
  assert experiment.stage_hash(edited) != experiment.stage_hash(here)


def test_a_carried_study_accepts_its_data_elsewhere_and_fields_added_since(tmp_path):
  here = _interactions(str(tmp_path / "a" / "ratings.txt"))
  wd = str(tmp_path / "study")
  os.makedirs(wd)
  stored = runner._comparable(here)
  del stored["model"]["text"]["tune"]  # a field added after the study ran
  with open(os.path.join(wd, "study.json"), "w") as f:
    json.dump({"config": stored, "data_files": runner.data_files(here), "cells": []}, f)
  runner.check_same_config(wd, _interactions(str(tmp_path / "b" / "ratings.txt")))  # moved, same bytes
  tuned = _interactions(str(tmp_path / "b" / "ratings.txt"))
  tuned.model.text.tune = "lora"  # the new field, not at the value that behaves as before it
  with pytest.raises(runner.ConfigConflict, match=r"model.text.tune: '<absent>' -> 'lora'"):
    runner.check_same_config(wd, tuned)
  edited = _interactions(str(tmp_path / "c" / "ratings.txt"), lines=("1 1\n", "1 3\n", "2 2\n", "2 3\n"))
  with pytest.raises(runner.ConfigConflict, match="other data"):
    runner.check_same_config(wd, edited)
  renamed = _interactions(str(tmp_path / "b" / "other.txt"))  # same bytes, another name: other per-file keys
  with pytest.raises(runner.ConfigConflict, match="data.files.path"):
    runner.check_same_config(wd, renamed)


def test_the_report_names_the_code_and_a_pretraining_trained_again():
  from xrec import report
  a = {"key": "a", "code": {"commit": "1" * 40, "dirty": False}, "stages": {"pretrain": "h"}}
  b = {"key": "b", "code": {"commit": "2" * 40, "dirty": True}, "stages": {"pretrain": "h"},
       "pretrain_rerun": {"valid": 0.21, "recorded_valid": [0.2], "difference": 0.01, "cells": 1}}
  assert report.code_section([a, a]) == ["", "Code: 2 cell(s) at 111111111111."]
  assert report.code_section([a, b]) == ["", "Code: 1 cell(s) at 111111111111; 1 cell(s) at 222222222222 "
                                             "with uncommitted changes."]
  assert report.code_section([{"key": "old"}]) == []  # records from before they named their code
  lines = report.pretraining_section([{**b, "overrides": {"seed": 0}, "pretrain": {
      "valid": {"ndcg@10": 0.21}, "test": {"ndcg@10": 0.2}, "best_step": 4}}])
  assert "reached valid 0.2100 where the records' 1 earlier cell(s) saw 0.2000" in lines[-1]
  # one stage trained twice gave two source models: two rows, each with its seeds, said under the table
  first = {**a, "overrides": {"seed": 0}, "pretrain": {"valid": {"ndcg@10": 0.2}, "test": {"ndcg@10": 0.19},
                                                       "best_step": 6}}
  host = {"cpu": "Test CPU", "cores": 2, "cores_visible": 1}
  again = [{**b, "key": k, "overrides": {"seed": s}, "pretrain": {"valid": {"ndcg@10": 0.21}, "test": {"ndcg@10": 0.2},
                                                                  "best_step": 4, "host": host}}
           for k, s in (("b", 1), ("c", 2))]
  lines = report.pretraining_section([first, first, *again])
  rows = [line for line in lines if line.startswith("| h ")]
  assert rows == ["| h (seed 0) | 0.2000 | 0.1900 | 6 | no |", "| h (seeds 1, 2) | 0.2100 | 0.2000 | 4 | no |"]
  said = next(line for line in lines if "was trained 2 times" in line)
  assert "valid 0.2000 at step 6 (seeds 0; code 1111111; host not recorded)" in said
  assert "(seeds 1, 2; code 2222222; Test CPU, 1 of 2 cores visible)" in said and "XLA:CPU's arithmetic" in said
  from xrec import runindex
  gpu = {"platform": "gpu", "device_kind": "NVIDIA H100", "cpu": "Test CPU", "cores": 16, "cores_visible": 16}
  assert runindex.host_label(gpu) == "NVIDIA H100 (Test CPU, 16 of 16 cores visible)"
  on_gpus = [{**r, "pretrain": {**r["pretrain"], "host": gpu}} for r in (first, *again)]
  assert "XLA:CPU" not in "".join(report.pretraining_section(on_gpus))  # an accelerator's models: no CPU note
  assert len(report.pretraining_section([first, first])) == 6  # one model: one row, no such line


def test_a_carried_choice_at_its_grids_edge_extends_from_the_record(data_dir, finished, tmp_path, monkeypatch):
  """tune.extend_at_edge raised on a carried study: a cell that tuned itself trains only the one
  candidate beyond its edge (its grid's results are in its record) and chooses as the same cell with
  its stages here does; the cells that reuse its choice wait for it and run again only if it moved."""
  wd, records = finished
  first = _records(wd)
  extended = _config(data_dir)
  extended.tune.extend_at_edge = 1  # every choice of a two-value grid sits at an edge
  local = str(tmp_path / "local")  # the same study with its stages here
  shutil.copytree(wd, local)
  assert runner.run_study(extended, _module(CELLS), local)["failed"] == 0
  want = _records(local)
  calls = _counting(monkeypatch)
  carried = str(tmp_path / "carried")
  runner.continue_from(records, carried, extended, _module(CELLS))
  jobs = {job.key: job for job in runner.parallel_jobs(extended, _module(CELLS), carried)}
  index = {r["key"]: r["index"] for r in first.values()}
  for strategy in ("scratch", "full_finetune"):  # seed 1 waits for seed 0's extension
    tuner, reuser = (runner.cell_key({"transfer.strategy": strategy, "seed": s}) for s in (0, 1))
    assert jobs[reuser].after == (index[tuner],) and jobs[tuner].after == ()
  assert "transfer.strategy=zero_shot,seed=0" not in jobs  # nothing to extend
  assert runner.run_study(extended, _module(CELLS), carried)["failed"] == 0
  got = _records(carried)
  timing = ("users_per_second", "eval_seconds")
  retrained = set()
  for key, old in first.items():
    new, local_new = got[key], want[key]
    assert new["tuning"].get("chosen") == local_new["tuning"].get("chosen")
    assert {k: v for k, v in new["test"].items() if k not in timing} == \
           {k: v for k, v in local_new["test"].items() if k not in timing}
    if old["overrides"]["transfer.strategy"] == "zero_shot":
      continue
    if old["overrides"]["seed"] == 0:  # its grid from the record, the extension trained here
      assert [c["stage"] for c in old["tuning"]["candidates"]] == [c["stage"] for c in new["tuning"]["candidates"][:2]]
      assert new["tuning"]["candidates"] == local_new["tuning"]["candidates"]
      assert len(new["tuning"]["extended"]) == 1 and new["extended"] == [new["tuning"]["extended"][0]["stage"]]
      assert new["tuning"]["extended"][0]["stage"] in calls
      assert not {c["stage"] for c in old["tuning"]["candidates"]} & set(calls)
    elif new["tuning"]["chosen"] != old["tuning"]["chosen"]:
      retrained.add(new["stages"]["transfer"])
    else:  # the same choice: not run again
      assert new["finished_at"] == old["finished_at"]
  # the pretrainings of the cells run again (not here), the two extensions, the seed-1 cells whose choice moved
  pretrains = {r["stages"]["pretrain"] for k, r in got.items() if "pretrain" in r["stages"]
               and r["finished_at"] != first[k]["finished_at"]}
  extensions = [got[runner.cell_key({"transfer.strategy": s, "seed": 0})]["tuning"]["extended"][0]["stage"]
                for s in ("scratch", "full_finetune")]
  assert sorted(calls) == sorted([*pretrains, *extensions, *retrained])


def test_a_cell_waits_for_the_cells_it_runs_after(tmp_path):
  from xrec.train import parallel
  log_file = tmp_path / "order.txt"

  def command(index):
    return [sys.executable, "-c", f"import time\nopen({str(log_file)!r}, 'a').write('start {index}\\n')\n"
            f"time.sleep(0.5)\nopen({str(log_file)!r}, 'a').write('end {index}\\n')"]
  jobs = [parallel.Job(0, "a", ()), parallel.Job(1, "b", (), after=(0,)), parallel.Job(2, "c", ())]
  assert parallel.run_jobs(jobs, command, 3, lambda: set())["failed"] == 0
  order = log_file.read_text().split("\n")
  # three free workers: c starts beside a, b only once a has ended
  assert order.index("start 2") < order.index("end 0") < order.index("start 1")
