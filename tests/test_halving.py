"""Successive halving of a tuning grid (tune.halving): candidates are ranked at rungs, the dropped
ones stop there, the survivors train the whole budget and equal uninterrupted runs, a rerun is
cached, and bad settings fail with what is valid."""

import json
import os
import types

import pytest

from conftest import tiny_config
from xrec.config import with_overrides
from xrec.train import experiment, runner

LRS = (1e-4, 1e-3, 3e-3, 1e-2)


def _config(data_dir, **tune):
  c = tiny_config(data_dir)
  c.data.domain = "target"
  c.train.update(dict(num_steps=16, eval_every_steps=2, checkpoint_every_steps=2))
  c.tune.lr = LRS
  c.tune.update(tune)
  return c


def test_rungs_are_evaluations_below_the_budget():
  c = tiny_config("")
  c.train.update(dict(num_steps=100, eval_every_steps=5))
  assert runner.rungs(c) == []  # off
  c.tune.update(dict(halving=2, rungs=2))
  assert runner.rungs(c) == [25, 50]
  c.tune.update(dict(halving=3, rungs=3))
  assert runner.rungs(c) == [10, 30]  # 100/27 = 3 is below one evaluation: dropped
  c.tune.halving = 1
  with pytest.raises(ValueError, match="eta >= 2"):
    runner.rungs(c)
  c.tune.halving, c.train.num_steps = 2, 0
  with pytest.raises(ValueError, match="set train.num_steps"):
    runner.rungs(c)
  study = types.SimpleNamespace(sweep=lambda: iter([{"seed": 0}]))  # refused before any work, naming the cell
  with pytest.raises(ValueError, match=r"cell 0 .*set train.num_steps"):
    runner.check_study(c, study)


def test_halving_drops_at_rungs_and_survivors_equal_uninterrupted_runs(data_dir, tmp_path, monkeypatch):
  calls = []
  real = experiment.train_and_evaluate
  monkeypatch.setattr(experiment, "train_and_evaluate",
                      lambda config, workdir: calls.append((workdir, config.train.stop_at_step)) or real(config, workdir))
  study = types.SimpleNamespace(sweep=lambda: iter([{}]), metrics=lambda: {"metrics": ("ndcg@10",), "columns": ()})
  wd = str(tmp_path / "halving")
  counts = runner.run_study(_config(data_dir, halving=2, rungs=2), study, wd)
  assert counts["ran"] == 1 and counts["failed"] == 0
  (record,) = [json.loads(line) for line in open(os.path.join(wd, "runs.jsonl"))]
  halving = record["tuning"]["halving"]
  assert halving["eta"] == 2 and halving["rungs"] == [4, 8]
  # 4 candidates to step 4, the best 2 to step 8, the best 1 trains the whole budget
  assert [c[1] for c in calls] == [4, 4, 4, 4, 8, 8, 0]
  assert [d["rung_step"] for d in halving["dropped"]] == [4, 4, 8]
  survivors = record["tuning"]["candidates"]
  assert len(survivors) == 1 and record["tuning"]["chosen"] == survivors[0]["overrides"]
  for d in halving["dropped"]:  # stopped at its rung: no results, its evaluations up to the rung only
    folder = os.path.join(wd, "stages", d["stage"])
    assert not os.path.exists(os.path.join(folder, "results.json"))
    valid = [r for r in map(json.loads, open(os.path.join(folder, "metrics.jsonl"))) if r["split"] == "valid"]
    assert max(r["step"] for r in valid) == d["rung_step"]
    # where its best validation so far was, and whether that was the rung (dropped while improving)
    top = max(r["ndcg@10"] for r in valid)
    assert d["valid_so_far"] == top and d["best_step_so_far"] == min(r["step"] for r in valid if r["ndcg@10"] == top)
    assert d["improving"] == (d["best_step_so_far"] == d["rung_step"]) and d["kept_valid_so_far"] >= top
  # the survivor's results equal a run of the same candidate without rungs
  chosen = with_overrides(_config(data_dir), {**survivors[0]["overrides"], "tune.lr": ()})
  plain = real(chosen, str(tmp_path / "plain"))
  timing = ("users_per_second", "eval_seconds")
  assert {k: v for k, v in record["test"].items() if k not in timing} == \
         {k: v for k, v in plain["test"].items() if k not in timing}
  assert record["best_step"] == plain["best_step"]
  # a rerun reuses the cell (the dropped stages are not missing results)
  calls.clear()
  assert runner.run_study(_config(data_dir, halving=2, rungs=2), study, wd)["cached"] == 1 and not calls
