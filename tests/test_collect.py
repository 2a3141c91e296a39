"""experiments/real_data/collect.py: the queue's records carried into the repository append-only."""

import json
import os

from xrec.train import runner

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _collect():
  return runner.load_config_module(os.path.join(ROOT, "experiments", "real_data", "collect.py"))


def _write(path, records):
  with open(path, "w") as f:
    f.write("".join(json.dumps(r) + "\n" for r in records))


def test_records_are_carried_append_only_and_once(tmp_path):
  collect = _collect()
  workdir, dest = tmp_path / "runs" / "overlap_x", tmp_path / "repo" / "overlap_x"
  workdir.mkdir(parents=True)
  (workdir / "study.json").write_text(json.dumps({"cells": [{"key": "a"}, {"key": "b"}]}))
  first = [{"key": "a", "status": "done", "test": {"ndcg@10": 0.1}}, {"key": "b", "status": "failed"}]
  _write(workdir / "runs.jsonl", first)
  assert collect.collect(str(workdir), str(dest), True, dry_run=True) == first
  assert not dest.exists()  # a dry run writes nothing
  assert collect.collect(str(workdir), str(dest), True, dry_run=False) == first
  assert json.loads((dest / "study.json").read_text()) == {"cells": [{"key": "a"}, {"key": "b"}]}
  assert collect.collect(str(workdir), str(dest), True, dry_run=False) == []  # nothing twice
  # a rerun's record goes after the committed ones; a record the workdir no longer has stays
  rerun = {"key": "b", "status": "done", "test": {"ndcg@10": 0.2}}
  _write(workdir / "runs.jsonl", [first[0], rerun])
  assert collect.collect(str(workdir), str(dest), True, dry_run=False) == [rerun]
  lines = [json.loads(x) for x in (dest / "runs.jsonl").read_text().splitlines()]
  assert lines == first + [rerun]
  assert runner.latest_runs(str(dest))["b"]["status"] == "done"  # the last record of a cell counts


def test_an_older_record_never_follows_a_newer_one_and_no_machine_path_is_committed(tmp_path):
  collect = _collect()
  newer, older = tmp_path / "newer", tmp_path / "older"
  for wd, when, status in ((newer, "2026-12-06T12:00:00", "done"), (older, "2026-12-05T12:00:00", "failed")):
    wd.mkdir()
    (wd / "study.json").write_text(json.dumps({"cells": [{"key": "a"}], "carried_from": f"/machine/{wd.name}"}))
    _write(wd / "runs.jsonl", [{"key": "a", "status": status, "finished_at": when}])
  dest = tmp_path / "repo"
  assert [r["status"] for r in collect.collect(str(newer), str(dest), True, dry_run=False)] == ["done"]
  assert collect.collect(str(older), str(dest), True, dry_run=False) == []  # older than the committed record
  assert runner.latest_runs(str(dest))["a"]["status"] == "done"
  assert json.loads((dest / "study.json").read_text()) == {"cells": [{"key": "a"}]}


def test_each_study_goes_to_its_experiment_folder():
  collect = _collect()
  where = lambda name: os.path.relpath(collect._destination(name), os.path.join(ROOT, "experiments"))  # noqa: E731
  assert where("ml1m_cross_region_cpu_early") == "real_data/ml1m_cross_region_cpu_early"  # committed there
  assert where("text_tower_ml1m_cross_genre_cpu") == "text_tower/text_tower_ml1m_cross_genre_cpu"
  assert where("scaling_ml1m_cross_region_cpu") == "scaling/scaling_ml1m_cross_region_cpu"
  assert where("augment_ml1m_cross_region_cpu") == "real_data/augment_ml1m_cross_region_cpu"
