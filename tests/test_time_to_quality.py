"""experiments/bench/time_to_quality.py on a MovieLens-1M folder in the original layout (the test's
own small files): both loops produce curves in training seconds, the plain model is evaluated by
xrec's protocol, and the summary reads the first evaluation at or above each level."""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "bench"))

import time_to_quality as tq  # noqa: E402
import test_data_fixtures as F  # noqa: E402

from xrec.data import pipeline  # noqa: E402
from xrec.evaluate import metrics  # noqa: E402


def test_both_loops_on_real_layout_files_and_the_summary(tmp_path, monkeypatch):
  monkeypatch.setenv("XREC_DATA_DIR", str(tmp_path / "prepared"))
  F.write_ml1m(str(tmp_path / "real"), as_zip=False)
  config = tq.ml1m_config(str(tmp_path / "real"), steps=4, eval_every=2)
  assert config.model.name == "sasrec" and config.model.dropout == 0.2 and config.train.early_stopping_patience == 0
  config.model.max_len, config.train.batch_size, config.eval.batch_size = 12, 8, 8  # seconds, not minutes
  domain = pipeline.load_domain(config.data)
  xrec = tq.run_xrec(config, str(tmp_path / "run"))
  plain = tq.run_plain(config, domain, steps=4, eval_every=2)
  for curve in (xrec, plain):
    assert [r["step"] for r in curve] == [2, 4]
    assert 0 <= curve[0]["seconds"] <= curve[1]["seconds"] and all(0 <= r["ndcg@10"] <= 1 for r in curve)

  # the plain model's NDCG@10 is xrec's protocol: brute force over the same users agrees
  p = dict(num_items=domain.num_items, embed_dim=64, max_len=12, num_layers=2, num_heads=1, mlp_dim=64,
           compute_dtype="float32")
  import bench
  model = bench.plain_model(p)
  params, _, _ = bench.plain_model_and_step(p, np.ones((2, 12), np.int32), seed=3)
  batches = list(pipeline.eval_batches(domain, "valid", 8, 12))
  scores = np.concatenate([np.asarray(model.apply({"params": params}, jnp.asarray(b["inputs"]))[:, -1]) for b in batches])
  keep = np.concatenate([b["weight"] for b in batches]) > 0
  history = np.concatenate([b["history"] for b in batches])
  ref = metrics.reference_metrics(scores[keep], np.concatenate([b["target"] for b in batches])[keep],
                                  domain.num_items, history[keep], ks=(10,))
  assert abs(tq.plain_eval(model, params, domain, config) - ref["ndcg@10"]) < 1e-6

  curves = {"xrec": [[{"seconds": 5.0, "ndcg@10": 0.05}, {"seconds": 10.0, "ndcg@10": 0.12}]],
            "plain": [[{"seconds": 8.0, "ndcg@10": 0.09}, {"seconds": 30.0, "ndcg@10": 0.11}]]}
  summary = tq.summarise(curves, [0.10, 0.14])
  assert summary["0.1"]["median"] == {"xrec": 10.0, "plain": 30.0} and summary["0.1"]["plain_over_xrec"] == 3.0
  assert summary["0.14"]["median"] == {"xrec": None, "plain": None} and summary["0.14"]["plain_over_xrec"] is None
  tq.plot(curves, [0.10], str(tmp_path / "ttq.png"))
  assert os.path.getsize(tmp_path / "ttq.png") > 1000
  json.dumps(summary)


def test_xrec_set_changes_xrec_side_only_and_names_an_unknown_field(tmp_path):
  base = tq.ml1m_config(str(tmp_path), steps=10, eval_every=5)
  fast = tq.ml1m_config(str(tmp_path), steps=10, eval_every=5, overrides=[
      "objective.terms=(('sampled_softmax', 1.0),)", "objective.sampled_softmax.num_negatives = 512"])
  assert base.objective.terms == (("full_softmax", 1.0),)
  assert fast.objective.terms == (("sampled_softmax", 1.0),) and fast.objective.sampled_softmax.num_negatives == 512
  assert fast.model.to_dict() == base.model.to_dict() and fast.train.num_steps == 10
  with pytest.raises(ValueError, match="no field .nope."):
    tq.ml1m_config(str(tmp_path), steps=10, eval_every=5, overrides=["objective.nope=1"])
  with pytest.raises(ValueError, match="field=value"):
    tq.ml1m_config(str(tmp_path), steps=10, eval_every=5, overrides=["objective.terms"])


def test_merge_puts_loops_run_in_separate_processes_side_by_side(tmp_path):
  def part(name, points):
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"steps": 4, "curves": {name: [[{"step": s, "seconds": t, "ndcg@10": v}
                                                                for s, t, v in points]]}}))
    return str(path)
  xrec = part("xrec", [(2, 10.0, 0.11), (4, 20.0, 0.15)])
  plain = part("plain", [(2, 12.0, 0.05), (4, 25.0, 0.12)])
  merged = tq.merge([xrec, plain], [0.10, 0.14])
  assert merged["time_to"]["0.1"]["median"] == {"xrec": 10.0, "plain": 25.0}
  assert merged["time_to"]["0.14"]["median"] == {"xrec": 20.0, "plain": None}
  assert merged["best"] == {"xrec": [0.15], "plain": [0.12]} and merged["parts"] == [{"steps": 4}, {"steps": 4}]
  assert merged["steps_to"] == {"0.1": {"xrec": [2], "plain": [4]}, "0.14": {"xrec": [4], "plain": [None]}}
  with pytest.raises(ValueError, match="an xrec and a plain curve"):
    tq.merge([xrec], [0.10])


def test_a_reference_block_row_runs_the_plain_loop_with_the_same_model(tmp_path, monkeypatch):
  monkeypatch.setenv("XREC_DATA_DIR", str(tmp_path / "prepared"))
  F.write_ml1m(str(tmp_path / "real"), as_zip=False)
  config = tq.ml1m_config(str(tmp_path / "real"), steps=2, eval_every=2, row="ml1m_sasrec_refcode")
  assert config.model.sasrec.block == "reference" and config.model.item_init_std == 0.02
  config.model.max_len, config.train.batch_size, config.eval.batch_size = 12, 8, 8
  domain = pipeline.load_domain(config.data)
  built = []
  import bench
  monkeypatch.setattr(bench, "plain_model", lambda p, dropout=0.0: built.append(p["block"]) or
                      bench.NaiveSASRec(p["num_items"] + 1, p["embed_dim"], p["max_len"], p["num_layers"],
                                        p["num_heads"], p["mlp_dim"], jnp.float32, dropout, p["block"]))
  curve = tq.run_plain(config, domain, steps=2, eval_every=2)
  assert built and set(built) == {"reference"} and len(curve) == 1


def test_an_xrec_curve_from_a_run_made_elsewhere_starts_at_its_step0_evaluation(tmp_path):
  rows = [{"step": 0, "split": "valid", "time": 100.0, "eval_seconds": 5.0, "ndcg@10": 0.001},
          {"step": 10, "split": "train", "time": 120.0, "loss": 3.0},
          {"step": 20, "split": "valid", "time": 150.0, "eval_seconds": 6.0, "ndcg@10": 0.11},
          {"step": 40, "split": "valid", "time": 200.0, "eval_seconds": 6.0, "ndcg@10": 0.15}]
  (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
  curve = tq.curve_from_run(str(tmp_path))
  # the step-0 evaluation ended at 100 (the clock starts there); later evaluations are taken out
  assert curve == [{"step": 20, "seconds": 150.0 - 100.0 - 6.0, "ndcg@10": 0.11},
                   {"step": 40, "seconds": 200.0 - 100.0 - 12.0, "ndcg@10": 0.15}]
  # a clock started before the step-0 evaluation takes that evaluation out too
  assert tq.curve_from_run(str(tmp_path), start=90.0)[1]["seconds"] == 150.0 - 90.0 - 11.0
  (tmp_path / "metrics.jsonl").write_text(json.dumps(rows[2]) + "\n")
  with pytest.raises(ValueError, match="no step-0 evaluation"):
    tq.curve_from_run(str(tmp_path))
