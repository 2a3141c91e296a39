"""The benchmark script runs as documented (speed itself is never asserted: experiments/bench/README.md)."""

import json
import os
import subprocess
import sys

from conftest import COMPILE_FAST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(*flags):
  """The scripts' environment: one CPU device unless `flags` say otherwise, and conftest's fast
  compilation (these tests check what the scripts report, never how fast: the numbers in
  experiments/bench come from runs at XLA's default level)."""
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
  env["XLA_FLAGS"] = " ".join((*flags, COMPILE_FAST))
  return env


def test_bench_reports_xrec_and_the_plain_flax_step_in_one_run(tmp_path):
  out = tmp_path / "bench.json"
  env = _env()
  proc = subprocess.run([sys.executable, "experiments/bench/bench.py", "--preset", "smoke", "--loop", "15", "--ablate", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["preset"] == "smoke" and result["shapes"]["mlp_dim"] == 16
  for side in ("xrec", "naive_flax"):
    assert result[side]["ms_per_step"] > 0 and result[side]["train_sequences_per_s"] > 0
  assert result["xrec"]["eval_users_per_s"] > 0 and result["speedup_vs_naive"] > 0
  assert result["xrec_no_clip"]["change"] == {"optim.clip_norm": 0.0} and result["xrec_no_clip"]["ms_per_step"] > 0
  assert result["xrec_constant_lr"]["speedup_vs_naive"] > 0
  assert result["xrec_no_output_bias"]["change"] == {"model.output_bias": False}
  loop = result["loop"]
  assert loop["xrec_loop_sequences_per_s"] > 0 and loop["plain_loop_sequences_per_s"] > 0
  assert loop["training_users"] == 40 and loop["steps_per_run"] == 15
  evaluation = loop["population_eval"]
  assert evaluation["users"] == 40 and evaluation["speedup"] > 0 and evaluation["speedup_vs_issue_baseline"] > 0
  assert min(evaluation["bucket_widths"]) < result["shapes"]["max_len"] == max(evaluation["bucket_widths"])


def test_catalogue_preset_reports_memory_per_device(tmp_path):
  out = tmp_path / "catalog.json"
  env = _env("--xla_force_host_platform_device_count=4")
  proc = subprocess.run([sys.executable, "experiments/bench/bench.py", "--preset=catalog_smoke", "--out", str(out)],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  assert result["num_devices"] == 4  # the preset starts jax with 4 simulated CPU devices
  cat = result["catalogue"]
  assert cat["item_table_bytes_per_device"] * 4 == cat["item_table_bytes"]
  for term in ("sampled_softmax", "chunked_softmax", "full_softmax"):
    row = cat["objectives"][term]
    assert row["memory_per_device"]["peak_estimate"] > 0 and row["ms_per_step"] > 0
  assert cat["evaluation"]["users_per_s"] > 0 and cat["evaluation"]["top10_users_per_s"] > 0
  assert cat["evaluation"]["largest_collective_elements"] < cat["evaluation"]["scores_elements_per_batch"] // 4


def test_host_memory_times_both_steps_with_and_without_huge_pages(tmp_path):
  out = tmp_path / "host.json"
  env = _env()
  proc = subprocess.run([sys.executable, "experiments/bench/host_memory.py", "--preset", "smoke", "--rounds", "1",
                         "--steps", "1", "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                        timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(out.read_text())
  for name in ("xrec", "plain_flax"):
    sides = result["steps"][name]
    for side in ("huge_pages", "no_huge_pages"):
      assert sides[side]["ms_per_step"] > 0 and sides[side]["minor_faults_per_step"] >= 0
    assert sides["speedup_with_huge_pages"] > 0
  assert (result["note"] is None) == (result["transparent_hugepage_mode"] == "always")


def test_the_host_hint_reads_the_kernels_mode(tmp_path):
  from xrec.train import loop
  mode = tmp_path / "enabled"
  mode.write_text("always [madvise] never\n")
  assert loop.transparent_hugepages(str(mode)) == "madvise"
  assert "echo always" in loop.host_hint("cpu", "madvise") and "'never'" in loop.host_hint("cpu", "never")
  mode.write_text("[always] madvise never\n")
  assert loop.transparent_hugepages(str(mode)) == "always" and loop.host_hint("cpu", "always") is None
  assert loop.host_hint("gpu", "madvise") is None  # only XLA:CPU's step buffers are host memory
  assert loop.transparent_hugepages(str(tmp_path / "missing")) is None and loop.host_hint("cpu", None) is None


def test_the_host_names_what_moves_xlas_arithmetic(tmp_path, monkeypatch):
  """Each run records its CPU, instruction set and the cores its process may use: one config on one
  commit trained with one core visible (a --jobs worker) or on another CPU gives another model."""
  from xrec.train import loop
  info = tmp_path / "cpuinfo"
  info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx2 fma avx512f amx_tile aes\n\n"
                  "processor\t: 1\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse4_2 avx2 fma avx512f amx_tile aes\n")
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false")
  got = loop.host(str(info))
  assert got["cpu"] == "Test CPU 9000" and got["isa"] == ["amx_tile", "avx2", "avx512f", "fma", "sse4_2"]
  visible = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  assert got["cores_visible"] == visible and got["cores"] == os.cpu_count() and got["platform"] == "cpu"
  assert got["xla_flags"] == "--xla_cpu_multi_thread_eigen=false" and got["jaxlib_version"]
  missing = loop.host(str(tmp_path / "missing"))  # no /proc/cpuinfo (macOS): platform.processor(), no flags
  assert missing["isa"] == [] and missing["cores_visible"] >= 1


def test_the_cores_probe_trains_a_stored_stage_and_hashes_what_it_ends_with(data_dir, tmp_path):
  """experiments/real_data/probes/cores.py: a stage's config for N steps -> a parameter hash (the same
  again in one setting), or its own budget cut after N steps -> the validation curve so far."""
  sys.path.insert(0, os.path.join(ROOT, "experiments", "real_data", "probes"))
  import cores
  from conftest import tiny_config
  c = tiny_config(data_dir)
  c.data.domain = "source"
  stage = tmp_path / "stage.json"
  stage.write_text(json.dumps({"config": c.to_dict()}))
  first, again = (cores.stage(str(stage), 6, "", 0) for _ in range(2))
  speed = "train_sequences_per_second"
  assert first.pop(speed) > 0 and again.pop(speed) > 0  # the wall clock's: never compared
  assert first == again and len(first["params"]) == 16 and first["step"] == 6
  cut = cores.stage(str(stage), 0, "", 6)  # the 12-step budget, stopped after 6: evaluations at 0 and 6
  assert sorted(cut["valid_ndcg@10"]) == [0, 6]
  assert cores.kernel(rows=64, items=10) == cores.kernel(rows=64, items=10) != cores.kernel(rows=64, items=11)
