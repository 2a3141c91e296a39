"""The benchmark script runs (speed itself is never asserted: experiments/bench/README.md)."""

import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bench_module():
  spec = importlib.util.spec_from_file_location("xrec_bench", os.path.join(ROOT, "experiments", "bench", "bench.py"))
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # flax modules (dataclasses) look their module up
  spec.loader.exec_module(module)
  return module


def test_bench_reports_xrec_and_the_plain_flax_step_in_one_run(tmp_path, monkeypatch):
  bench = _bench_module()
  monkeypatch.setitem(bench.PRESETS, "tiny", dict(num_items=50, embed_dim=8, max_len=6, num_layers=1, num_heads=1,
                                                  mlp_dim=16, batch_size=8, compute_dtype="float32", eval_batch=8))
  out = tmp_path / "bench.json"
  monkeypatch.setattr(sys, "argv", ["bench.py", "--preset", "tiny", "--out", str(out)])
  bench.main()
  result = json.loads(out.read_text())
  assert result["preset"] == "tiny" and result["shapes"]["mlp_dim"] == 16
  for side in ("xrec", "naive_flax"):
    assert result[side]["ms_per_step"] > 0 and result[side]["train_sequences_per_s"] > 0
  assert result["xrec"]["eval_users_per_s"] > 0
  assert result["speedup_vs_naive"] > 0
