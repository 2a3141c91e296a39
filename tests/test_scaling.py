"""The scaling study (experiments/scaling, issue 30): its grid, the fit's verdicts on known curves,
and a few cells of the smoke preset run and analysed end to end (the source-data axis changes what
the pretraining reads)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xrec import models
from xrec.train import loop, runner

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
SCALING = os.path.join(ROOT, "experiments", "scaling")


def _module(name):
  return runner.load_config_module(os.path.join(SCALING, name + ".py"))


def _analyze():
  return runner.load_config_module(os.path.join(SCALING, "analyze.py"))


def _param_counts(config, num_items):
  module = models.build(config.model, num_items)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), jnp.ones((1, config.model.max_len), jnp.int32)))
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): int(np.prod(v.shape))
          for path, v in jax.tree_util.tree_flatten_with_path(nn.unbox(shapes["params"]))[0]}
  items = sum(n for p, n in flat.items() if p in module.roles().item_rows)
  return sum(flat.values()), sum(flat.values()) - items


def test_the_cpu_grid_spans_the_sizes_and_seeds_the_issue_asks_for():
  study = _module("config")
  config = study.get_config("ml1m_cross_region")
  every = list(study.sweep())
  cells = [c for c in every if "model.name" not in c]  # SASRec, the config's model
  sizes = {(c["model.embed_dim"], c["model.sasrec.num_layers"]) for c in cells}
  assert {d for d, _ in sizes} == {32, 64, 128, 256} and {b for _, b in sizes} == {1, 2, 4}
  pretrained = {(c["model.embed_dim"], c["model.sasrec.num_layers"], c["experiment.pretrain.data.user_fraction"])
                for c in cells if c["transfer.strategy"] != "scratch"}
  assert len(pretrained) == 12 and {f for *_, f in pretrained} == {0.25, 0.5, 1.0}
  seeds = {}
  for c in cells:
    key = (c["transfer.strategy"], c["model.embed_dim"], c["model.sasrec.num_layers"],
           c.get("experiment.pretrain.data.user_fraction"), c["data.user_fraction"])
    seeds.setdefault(key, set()).add(c["seed"])
  assert seeds[("adapter", 32, 1, 0.25, 0.05)] == {0, 1, 2, 3, 4}  # a corner: 5 seeds
  assert seeds[("adapter", 256, 4, 1.0, 0.2)] == {0, 1, 2, 3, 4}
  assert seeds[("adapter", 64, 2, 1.0, 0.2)] == {0, 1, 2}  # the interior: 3
  assert seeds[("scratch", 256, 4, None, 0.05)] == {0, 1, 2, 3, 4}
  assert {k[0] for k in seeds} == {"scratch", "zero_shot", "full_finetune", "frozen_encoder", "adapter"}
  # the second family: HSTU at the same sizes, on all source users, seeds 0-2, with its own scratch models
  hstu = [c for c in every if c.get("model.name") == "hstu"]
  assert {(c["model.embed_dim"], c["model.hstu.num_layers"]) for c in hstu} == sizes
  assert {c["seed"] for c in hstu} == {0, 1, 2} and len(hstu) == 6 * 2 * 5 * 3
  assert {c.get("experiment.pretrain.data.user_fraction") for c in hstu} == {None, 1.0}
  assert {c["transfer.strategy"] for c in hstu} == {k[0] for k in seeds}
  # every cell applies and passes the door's checks; tune once, one pretraining per (family, size, source)
  for cell in runner.cells_of(study)[:: 7]:
    c = runner.apply_overrides(config, cell.overrides)
    loop.validate(c)
    assert c.model.max_len == 50
    if c.model.name == "sasrec":
      assert c.model.sasrec.mlp_dim == 4 * c.model.embed_dim
    else:
      assert c.model.name == "hstu" and c.model.hstu.num_heads == 1
  assert config.tune.seed == 0 and config.experiment.pretrain.seed == 0
  # params span >= 30x with ML-1M's item table (3,706 items), far more without it (the docstring's figures)
  small = runner.apply_overrides(config, {"model.embed_dim": 32, "model.sasrec.num_layers": 1,
                                          "model.sasrec.mlp_dim": 128})
  large = runner.apply_overrides(config, {"model.embed_dim": 256, "model.sasrec.num_layers": 4,
                                          "model.sasrec.mlp_dim": 1024})
  (small_all, small_blocks), (large_all, large_blocks) = _param_counts(small, 3706), _param_counts(large, 3706)
  assert large_all / small_all >= 30 and large_blocks / small_blocks >= 200
  accelerator = list(_module("accelerator").sweep())
  assert {(1024, 8), (512, 8)} <= {(c["model.embed_dim"], c.get("model.sasrec.num_layers")) for c in accelerator}
  assert _module("accelerator").get_config("ml1m_cross_region").model.max_len == 200
  with pytest.raises(ValueError, match="name the scenario first"):
    study.get_config("ml1m")


def test_the_fit_tells_growth_reversal_saturation_and_noise_apart():
  fit = _analyze().fit
  rng = np.random.default_rng(0)
  xs = np.array([1e4, 3e4, 1e5, 3e5, 1e6])
  log = np.log10(xs)

  def groups(curve, noise=0.002, seeds=5):
    return [curve(v) + rng.normal(0, noise, seeds) for v in log]

  grows = fit(xs, groups(lambda v: 0.01 + 0.02 * v))
  assert grows["verdict"] == "grows" and grows["slope_per_decade"] == pytest.approx(0.02, abs=0.003)
  assert grows["slope_ci"][0] < 0.02 < grows["slope_ci"][1]
  assert fit(xs, groups(lambda v: 0.1 - 0.015 * v))["verdict"] == "reverses"
  flat = [0.005 * (-1) ** i + rng.normal(0, 0.002, 5) for i in range(len(xs))]  # scatter, no trend
  assert fit(xs, flat)["verdict"] == "no trend"
  saturating = fit(xs, groups(lambda v: -0.02 * (v - 6.5) ** 2))  # rises, flattens at the top
  assert saturating["verdict"] == "saturates" and saturating["curvature_ci"][1] < 0
  peaked = fit(xs, groups(lambda v: -0.02 * (v - 5.0) ** 2))  # the top inside the sizes
  assert peaked["verdict"] == "rises then falls" and peaked["vertex_log10"] == pytest.approx(5.0, abs=0.1)
  # sizes that scatter around the line widen the interval: the same slope, one size off by 0.03
  off = groups(lambda v: 0.02 * v, noise=0.001)
  off[2] = off[2] + 0.03
  scattered = fit(xs, off)
  assert scattered["worst_point"]["log10"] == pytest.approx(5.0)
  assert np.diff(scattered["slope_ci"])[0] > 5 * np.diff(grows["slope_ci"])[0]
  assert fit(xs[:2], groups(lambda v: 0.02 * v)[:2])["verdict"].startswith("too few sizes")


def test_smoke_cells_run_and_analyse_with_the_source_axis_changing_the_pretraining(data_dir, tmp_path):
  study = _module("smoke")
  config = study.get_config()
  config.data.data_dir = data_dir
  config.tune.lr = (3e-3,)
  cells = runner.cells_of(study)
  wanted = {("sasrec", "scratch", 8, None), ("sasrec", "scratch", 16, None), ("sasrec", "zero_shot", 8, 0.5),
            ("sasrec", "zero_shot", 8, 1.0), ("sasrec", "full_finetune", 8, 1.0), ("hstu", "scratch", 8, None),
            ("hstu", "full_finetune", 8, 1.0)}
  workdir = str(tmp_path / "scaling")
  for cell in cells:
    o = cell.overrides
    if (o.get("model.name", "sasrec"), o["transfer.strategy"], o["model.embed_dim"],
        o.get("experiment.pretrain.data.user_fraction")) in wanted:
      assert runner.run_study(config, study, workdir, only=str(cell.index))["failed"] == 0
  result = _analyze().analyze(workdir)
  # the HSTU family: paired with its own scratch model, fitted and ranked apart from SASRec
  hstu = {p["strategy"]: p for p in result["points"] if p["family"] == "hstu"}
  assert hstu["full_finetune"]["gain"] == pytest.approx(hstu["full_finetune"]["ndcg"] - hstu["scratch"]["ndcg"])
  assert [r["size"] for r in result["best"] if r["family"] == "hstu"] == [[8, 1]]
  result["pretrainings"] = [p for p in result["pretrainings"] if p["stage"] != hstu["full_finetune"]["pretrain"]]
  result["best"] = [r for r in result["best"] if r["family"] == "sasrec"]
  result["points"] = [p for p in result["points"] if p["family"] == "sasrec"]
  pre = result["pretrainings"]
  assert len(pre) == 2  # SASRec's, one per source fraction: full_finetune and zero_shot at 100% share theirs
  half, whole = sorted(pre, key=lambda p: p["source_users"])
  assert whole["source_users"] == 120 and half["source_users"] == 60
  assert 0 < half["source_interactions"] < whole["source_interactions"]
  assert half["params"] == whole["params"] and 0 < half["params_no_items"] < half["params"]
  points = {(p["strategy"], p["source"], p["size"][0]): p for p in result["points"]}
  scratch = {d: points[("scratch", None, d)] for d in (8, 16)}
  assert points[("zero_shot", 0.5, 8)]["gain"] == pytest.approx(points[("zero_shot", 0.5, 8)]["ndcg"] - scratch[8]["ndcg"])
  best = max(scratch.values(), key=lambda p: p["valid"])  # the best scratch by validation, its test read
  assert points[("full_finetune", 1.0, 8)]["gain_best"] == pytest.approx(points[("full_finetune", 1.0, 8)]["ndcg"]
                                                                         - best["ndcg"])
  assert [r["size"] for r in result["best"]] == [[8, 1], [16, 2]]
  top = max(result["best"], key=lambda r: r["best_ndcg"])
  records = {(r["overrides"]["transfer.strategy"], r["overrides"].get("experiment.pretrain.data.user_fraction")): r
             for r in runner.read_runs(workdir) if "model.name" not in r["overrides"]}  # SASRec's
  tuned = points[("full_finetune", 1.0, 8)]  # its own stage's seconds: the record's less the pretraining's
  assert tuned["wall_seconds"] == pytest.approx(records[("full_finetune", 1.0)]["stage_wall_seconds"]
                                                - whole["wall_seconds"])
  assert 0 < tuned["wall_seconds"] < records[("full_finetune", 1.0)]["stage_wall_seconds"]
  out = os.path.join(workdir, "scaling")
  for name in ("scaling.json", "scaling.md", "gain_vs_params.png", "gain_vs_source.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  optimal = json.load(open(os.path.join(out, "scaling.json")))["compute_optimal"]["0.2"]
  assert [optimal["best_family"], optimal["best_size"]] in (["sasrec", top["size"]], ["hstu", [8, 1]])


def test_cells_that_do_not_apply_are_left_out_of_the_points(tmp_path):
  from xrec import runindex
  base = {"status": "done", "stages": {}, "test": {"ndcg@10": 0.1}, "valid": {"ndcg@10": 0.1}, "total_params": 10,
          "budget": {"best_is_last_eval": False}, "stage_wall_seconds": 1.0}
  size = {"model.embed_dim": 8, "model.sasrec.num_layers": 1, "data.user_fraction": 0.2, "seed": 0}
  runindex.append_run(str(tmp_path), {**base, "key": "a", "overrides": {"transfer.strategy": "scratch", **size}})
  runindex.append_run(str(tmp_path), {**base, "key": "b", "not_applicable": "zero_shot: no shared item",
                                      "overrides": {"transfer.strategy": "zero_shot", **size}})
  pts, _ = _analyze().points(str(tmp_path))
  assert [p["strategy"] for p in pts] == ["scratch"]
