"""The metrics of an unfinished run at its best checkpoint so far (python -m xrec.train.interim): on a
finished run they equal its results.json; on a killed one they come from its best checkpoint so
far, nothing is written into the stage, and the run then resumes to the same results."""

import copy
import json
import os

import pytest

from conftest import tiny_config
from xrec.train import experiment, interim

TIMING = ("users_per_second", "eval_seconds")


def _metrics(m):
  return {k: v for k, v in m.items() if k not in TIMING}


def _listing(folder):
  return sorted((os.path.relpath(os.path.join(d, f), folder), os.path.getsize(os.path.join(d, f)))
                for d, _, files in os.walk(folder) for f in files)


def test_interim_equals_the_finished_results_and_reads_a_killed_run(data_dir, tmp_path, capsys):
  c = tiny_config(data_dir)
  c.data.domain = "target"
  stages = str(tmp_path / "stages")
  done = experiment.run_cached_stage(c, stages, "single")
  stage = done["stage"]["dir"]
  got = interim.interim_results(stage)
  assert got["finished"] and got["best_step"] == done["best_step"]
  assert _metrics(got["valid"]) == _metrics(done["valid"]) and _metrics(got["test"]) == _metrics(done["test"])
  # the same run killed after 8 of its 12 steps: its best so far, and nothing written into the stage
  killed = copy.deepcopy(c)
  killed.train.stop_after_steps = 8
  stopped = experiment.run_cached_stage(killed, str(tmp_path / "killed"), "single")
  assert stopped["stopped_at_step"] == 8
  folder = stopped["stage"]["dir"]
  before = _listing(folder)
  assert interim.main([folder, "--out", str(tmp_path / "interim.json")]) == 0
  assert _listing(folder) == before
  got = json.load(open(tmp_path / "interim.json"))
  valid = [r for r in map(json.loads, open(os.path.join(folder, "metrics.jsonl"))) if r["split"] == "valid"]
  best = max(valid, key=lambda r: r["ndcg@10"])
  assert not got["finished"] and got["best_step"] == best["step"] and got["last_eval_step"] == 6
  assert got["valid"]["ndcg@10"] == pytest.approx(best["ndcg@10"], abs=1e-6)
  assert "not finished" in capsys.readouterr().out
  # the killed run then resumes to the uninterrupted run's results
  resumed = experiment.run_cached_stage(c, str(tmp_path / "killed"), "single")
  assert _metrics(resumed["test"]) == _metrics(done["test"])


def test_interim_names_what_is_missing(tmp_path, capsys):
  assert interim.main([str(tmp_path)]) == 2
  assert "stage.json is missing" in capsys.readouterr().err
  (tmp_path / "stage.json").write_text(json.dumps({"config": {}}))
  with pytest.raises(ValueError, match="no validation evaluation yet"):
    interim.curve(str(tmp_path), "ndcg@10")


def test_interim_counts_the_patience_as_the_loop_does_and_reads_old_field_names(tmp_path):
  """Extra evaluations (train.eval_at_steps) do not count toward the patience; a stage.json written
  before data.files.keys became data.files.key_scope still reads."""
  rows = [(0, 0.10), (10, 0.20), (20, 0.19), (30, 0.18), (40, 0.17), (50, 0.16), (100, 0.15)]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step, value in rows:
      f.write(json.dumps({"step": step, "split": "valid", "ndcg@10": value}) + "\n")
  seen = interim.curve(str(tmp_path), "ndcg@10", eval_every=50, num_steps=1500)
  assert seen["best_step"] == 10 and seen["evals_since_best"] == 2 and seen["evaluations"] == 7  # 50, 100
  assert interim.curve(str(tmp_path), "ndcg@10")["evals_since_best"] == 5  # every row, without a cadence
  (tmp_path / "stage.json").write_text(json.dumps({"config": {"data": {"files": {"keys": "shared"}}}}))
  assert interim.stage_config(str(tmp_path)).data.files.key_scope == "shared"
