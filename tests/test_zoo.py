"""The local model zoo: add / list / remove, init_from by name, and its errors (issue 13)."""

import json
import os
import shutil

import numpy as np

import pytest

from conftest import tiny_config
from xrec import zoo
from xrec.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("pretrained"))
  train_and_evaluate(tiny_config(data_dir), workdir)
  return workdir


def test_zoo_round_trip_and_init_from_by_name(data_dir, pretrained, tmp_path):
  catalog = str(tmp_path / "zoo.json")
  entry = zoo.add(pretrained, "tiny-sasrec", catalog)
  with open(os.path.join(pretrained, "results.json")) as f:
    results = json.load(f)
  assert entry["encoder"] == "sasrec" and entry["params"] == results["param_count"]
  assert entry["stored_bytes"] > 0 and entry["items"]["count"] == results["dataset"]["items"]
  assert entry["valid"]["ndcg@10"] == results["valid"]["ndcg@10"]
  assert entry["source"]["domain"] == "source" and entry["model"]["embed_dim"] == 16
  assert zoo.read_catalog(catalog)["entries"]["tiny-sasrec"] == entry  # written and read back
  listed = zoo.table(catalog)
  assert "| tiny-sasrec | sasrec | 16 |" in listed and "| ok |" in listed
  assert zoo.main(["--catalog", catalog, "list"]) == 0
  # a run names the entry in train.init_from and starts from that checkpoint
  os.environ["XREC_ZOO"] = catalog
  try:
    cfg = tiny_config(data_dir)
    cfg.data.domain = "target"
    cfg.transfer.strategy = "full_finetune"
    cfg.train.init_from = "tiny-sasrec"
    out = train_and_evaluate(cfg, str(tmp_path / "transfer"))
  finally:
    del os.environ["XREC_ZOO"]
  assert out["init"] == {"kind": "pretrained", "path": pretrained}
  zoo.remove("tiny-sasrec", catalog)
  assert zoo.read_catalog(catalog)["entries"] == {}


def test_zoo_errors_name_what_is_wrong(pretrained, tmp_path):
  catalog = str(tmp_path / "zoo.json")
  with pytest.raises(FileNotFoundError, match="holds no finished run"):
    zoo.add(str(tmp_path), "empty", catalog)
  copy = str(tmp_path / "copy")
  shutil.copytree(pretrained, copy)
  zoo.add(copy, "gone", catalog)
  shutil.rmtree(os.path.join(copy, "best"))
  assert "| **missing** |" in zoo.table(catalog)
  with pytest.raises(FileNotFoundError, match=r"zoo entry 'gone': its checkpoint .*best is gone"):
    zoo.resolve("gone", catalog)
  with pytest.raises(FileNotFoundError, match=r"train.init_from='nope' is neither a folder nor a zoo entry.*\['gone'\]"):
    zoo.resolve("nope", catalog)
  other = str(tmp_path / "other")
  shutil.copytree(pretrained, other)
  with open(os.path.join(other, "model.json")) as f:
    model = json.load(f)
  model["model"]["name"] = "transformer9000"
  with open(os.path.join(other, "model.json"), "w") as f:
    json.dump(model, f)
  with pytest.raises(ValueError, match=r"encoder 'transformer9000' is unknown to this xrec; known: \["):
    zoo.add(other, "odd", catalog)
  assert zoo.main(["--catalog", catalog, "remove", "nothing"]) == 2


def test_select_ranks_a_tiny_zoo_with_costs_and_a_pareto_front(data_dir, pretrained, tmp_path):
  from xrec import select
  catalog = str(tmp_path / "zoo.json")
  zoo.add(pretrained, "small", catalog)
  bigger = tiny_config(data_dir)
  bigger.model.embed_dim = 32
  bigger.model.name = "hstu"  # the zoo holds any encoder: every estimator runs on HSTU too (issue 30)
  train_and_evaluate(bigger, str(tmp_path / "bigger"))
  zoo.add(str(tmp_path / "bigger"), "bigger", catalog)
  target = tiny_config(data_dir)
  target.data.domain = "target"
  rows = select.select(target, catalog, str(tmp_path / "out"), proxy_steps=6)
  assert {r["name"] for r in rows} == {"small", "bigger"}
  for r in rows:
    assert r["item_overlap"] == 1.0 and r["zero_shot_ndcg@10"] is not None
    assert 0 <= r["probe_ndcg@10"] <= 1 and np.isfinite(r["log_me"]) and r["proxy_ndcg@10"] is not None
    assert r["mmd"] is not None and r["neg_mmd"] == -r["mmd"] and 0 <= r["label_cka"] <= 1
    # cross-region: no user is in both domains, so user CKA is n/a (not 0) and not ranked
    assert r["shared_users"] == 0 and r["user_cka"] is None
    assert set(r["ranks"]) == set(select.ESTIMATORS) - {"user_cka"} and all(v >= 0 for v in r["seconds"].values())
  assert rows[0]["combined_rank"] <= rows[1]["combined_rank"]
  assert any(r["pareto"] for r in rows)
  small = next(r for r in rows if r["name"] == "small")
  assert small["pareto"]  # the fewest params is never dominated
  written = json.load(open(tmp_path / "out" / "select.json"))
  assert [c["name"] for c in written["candidates"]] == [r["name"] for r in rows]
  assert "| small | sasrec |" in (tmp_path / "out" / "select.md").read_text()
  assert "| bigger | hstu |" in (tmp_path / "out" / "select.md").read_text()


def test_select_pairs_the_users_of_both_domains_for_user_cka(data_dir, tmp_path):
  """On a cross-platform pair every target user has a source history: user CKA compares the
  candidate's representations of each user's two histories, over all of them."""
  from xrec import select
  cfg = tiny_config(data_dir)
  cfg.data.synthetic.scenario = "cross_platform"
  train_and_evaluate(cfg, str(tmp_path / "run"))
  catalog = str(tmp_path / "zoo.json")
  zoo.add(str(tmp_path / "run"), "platform", catalog)
  cfg.data.domain = "target"
  (row,) = select.select(cfg, catalog, str(tmp_path / "out"))
  assert row["shared_users"] == 60 and 0 < row["user_cka"] <= 1 and "user_cka" in row["ranks"]


def test_rank_rows_marks_the_front_and_leaves_na_unranked():
  from xrec import select
  rows = [{"name": "a", "params": 10, "zero_shot_ndcg@10": None, "probe_ndcg@10": 0.5, "log_me": -1.0},
          {"name": "b", "params": 20, "zero_shot_ndcg@10": 0.3, "probe_ndcg@10": 0.6, "log_me": -0.5},
          {"name": "c", "params": 30, "zero_shot_ndcg@10": 0.1, "probe_ndcg@10": 0.4, "log_me": -2.0}]
  out = {r["name"]: r for r in select.rank_rows(rows)}
  assert "zero_shot_ndcg@10" not in out["a"]["ranks"]  # n/a, not ranked last as if 0
  assert out["b"]["combined_rank"] == 1.0 and out["c"]["combined_rank"] == pytest.approx(8 / 3)  # ranks 2, 3, 3
  assert out["a"]["combined_rank"] == 2.0  # ranks 2, 2: its n/a column does not count
  assert out["a"]["pareto"] and out["b"]["pareto"] and not out["c"]["pareto"]


def test_select_reports_overlap_estimates_as_na_for_a_model_of_other_items(data_dir, pretrained, tmp_path):
  """A candidate trained on a catalogue that shares no item with the target: its zero-shot estimate
  is n/a (None), not 0, and it is not ranked on it; the representation-based estimates still run."""
  from xrec import select
  other = str(tmp_path / "other_items")
  shutil.copytree(pretrained, other)
  with open(os.path.join(other, "item_keys.json")) as f:
    keys = json.load(f)
  keys["item_keys"] = [f"elsewhere-{k}" for k in keys["item_keys"]]
  with open(os.path.join(other, "item_keys.json"), "w") as f:
    json.dump(keys, f)
  catalog = str(tmp_path / "zoo.json")
  zoo.add(other, "elsewhere", catalog)
  zoo.add(pretrained, "same-items", catalog)
  target = tiny_config(data_dir)
  target.data.domain = "target"
  rows = {r["name"]: r for r in select.select(target, catalog, str(tmp_path / "out"))}
  assert rows["elsewhere"]["item_overlap"] == 0.0 and rows["elsewhere"]["zero_shot_ndcg@10"] is None
  assert "zero_shot_ndcg@10" not in rows["elsewhere"]["ranks"] and rows["elsewhere"]["log_me"] is not None
  assert rows["same-items"]["zero_shot_ndcg@10"] is not None
  assert "| elsewhere |" in (tmp_path / "out" / "select.md").read_text()
  assert "| n/a |" in (tmp_path / "out" / "select.md").read_text()


def test_the_selection_study_parts_merge_into_one_summary(tmp_path):
  import importlib.util
  spec = importlib.util.spec_from_file_location("selection_analyze", os.path.join(
      os.path.dirname(__file__), "..", "experiments", "selection", "analyze.py"))
  analyze = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(analyze)

  def rows(shift, names, est_values, truth):
    return [{"name": n, "target": {"data.synthetic.shift": shift}, **{e: v for e in analyze.ESTIMATORS},
             "seconds": {e: 0.5 for e in analyze.ESTIMATORS},
             "finetuned_valid_ndcg@10": t, "estimate_seconds": 1.0, "finetune_seconds": 10.0}
            for n, v, t in zip(names, est_values, truth)]

  a = rows(0.25, "abc", [1, 2, 3], [0.1, 0.2, 0.3])  # tau 1, top-1 hit
  b = rows(0.5, "abc", [3, 2, 1], [0.1, 0.3, 0.2])  # one concordant pair of 3: tau -1/3, top-1 miss
  c = rows(0.75, "ab", [1, 2], [0.2, 0.1])  # a target missing a candidate: not in the means
  parts = []
  # a target's candidates split over two parts (a session ended between them)
  for name, part in (("p1", a[:2] + b), ("p2", a[2:] + c)):
    path = tmp_path / name / "selection.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"rows": part}))
    parts.append(str(path))
  report = analyze.merge(str(tmp_path / "all"), parts)
  est = analyze.ESTIMATORS[0]
  assert report["summary"][est]["mean_tau"] == pytest.approx((1.0 - 1 / 3) / 2)
  assert report["summary"][est]["top1_hit_rate"] == 0.5 and report["summary"][est]["targets"] == 2
  assert [t["complete"] for t in report["targets"]] == [True, True, False]
  assert report["estimate_seconds"] == 8.0 and report["finetune_seconds"] == 80.0
  assert report["summary"][est]["seconds_per_candidate"] == 0.5
  md = (tmp_path / "all" / "selection.md").read_text()
  # regret: the fine-tuned metric lost by taking the estimator's top candidate (0, then 0.3 - 0.1)
  assert report["summary"][est]["mean_regret"] == pytest.approx(0.1)
  assert f"| {est} | 0.333 | 0.50 | 0.1000 (0.2000) | 2 | 0.5 | 5.0% |" in md
  assert "| data.synthetic.shift=0.5 | 1 | -0.333 |" in md  # per setting: complete targets only
  assert (tmp_path / "all" / "selection.md").exists() and (tmp_path / "all" / "estimate_vs_finetuned.png").exists()
  with pytest.raises(ValueError, match="is in both"):
    analyze.merge(str(tmp_path / "again"), [parts[0], parts[0]])
  assert report["source_choice"] == {}  # one source per architecture: no source to pick
  # picking the source of one architecture: a pick per (target, architecture), the best source counted
  names = ["a", "a from target@0.5", "a from target@0.75", "b", "b from target@0.5", "b from target@0.75"]
  zoo = rows(0.25, names, [3, 2, 1, 1, 2, 3], [0.3, 0.2, 0.1, 0.1, 0.4, 0.2])
  for row in zoo[0::3]:
    row["user_cka"] = None  # defined for the other sources only (shared users): not a pick among all
  choice = analyze.source_choice(zoo + rows(0.5, ["c", "d"], [1, 2], [0.1, 0.2]))
  assert choice["groups"] == 2 and choice["sources"] == 3
  assert choice["best_source"] == {"source": 1, "target@0.5": 1}
  first = choice["estimators"][analyze.ESTIMATORS[0]]
  assert first["top1_hit_rate"] == 0.5 and first["mean_regret"] == pytest.approx(0.1) and first["groups"] == 2
  assert choice["estimators"]["user_cka"]["groups"] == 0
  (tmp_path / "zoo").mkdir()
  md = analyze.write(zoo, str(tmp_path / "zoo"))  # the table in selection.md
  assert f"| {analyze.ESTIMATORS[0]} | 0.50 | 0.1000 (0.2000) | 2 |" in (tmp_path / "zoo" / "selection.md").read_text()
  # a candidate pretrained elsewhere than on the source (experiments/selection/sources.py) is named by it,
  # and its target by the rest of its overrides
  o = {"data.synthetic.shift": 0.25, "experiment.source_domain": "target", "experiment.pretrain.data.synthetic.shift": 0.5,
       "model.name": "sasrec", "model.embed_dim": 64, "seed": 0}
  assert analyze._name({"overrides": o}) == "sasrec-d64 from target@0.5"
  assert {k for k in o if k not in analyze.CANDIDATE_FIELDS} == {"data.synthetic.shift", "seed"}
  # a second pass over a run directory keeps the rows already estimated for the same cell results
  # (the stages are not there: estimating again would fail), and estimates the changed cell anew
  wd = tmp_path / "wd"
  (wd / "selection").mkdir(parents=True)
  (wd / "stages" / "pre").mkdir(parents=True)  # the candidates' pretraining (its results only)
  (wd / "stages" / "pre" / "results.json").write_text(json.dumps({"wall_seconds": {"total": 40.0},
                                                                           "valid": {"ndcg@10": 0.3}}))
  cells = [{"key": f"k{i}", "index": i, "status": "done", "valid": {"ndcg@10": r["finetuned_valid_ndcg@10"]},
            "test": {"ndcg@10": 0.0}, "stage_wall_seconds": 100.0 + i,
            "overrides": {"data.synthetic.shift": 0.25, "model.name": "sasrec", "model.embed_dim": i},
            "stages": {"transfer": "gone", "pretrain": "pre"}} for i, r in enumerate(a)]
  for i, r in enumerate(a):
    r["name"] = f"sasrec-d{i}"
  (wd / "selection" / "selection.json").write_text(json.dumps({"rows": a}))
  (wd / "runs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
  again = analyze.estimate_rows(str(wd), str(wd / "selection"))
  assert [r["name"] for r in again] == [r["name"] for r in a]
  assert all(r[e] == old[e] for r, old in zip(again, a) for e in analyze.ESTIMATORS if e != analyze.BASELINE)
  assert all(r[analyze.BASELINE] == 0.3 for r in again)  # the checkpoint's own source validation metric
  # fine-tuning cost: the cell's stages minus the (reused) pretraining
  assert [r["finetune_seconds"] for r in again] == [60.0, 61.0, 62.0]
  cells[0]["valid"]["ndcg@10"] = 0.5  # a rerun cell: its row is stale
  (wd / "runs.jsonl").write_text("".join(json.dumps(c) + "\n" for c in cells))
  with pytest.raises(FileNotFoundError, match="gone"):
    analyze.estimate_rows(str(wd), str(wd / "selection"))
