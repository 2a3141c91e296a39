"""Report math on fixed numbers (hand-computed), the three table formats agree, the CLI, study configs."""

import copy
import csv
import glob
import io
import json
import math
import zlib
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from xrec.report import tables

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYOUT = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": ["data.user_fraction"], "seed": "seed"}
# strategy -> fraction -> NDCG@10 of seeds 0, 1, 2
VALUES = {
    "scratch": {0.1: (0.10, 0.12, 0.14), 1.0: (0.30, 0.32, 0.34)},
    "zero_shot": {0.1: (0.20, 0.20, 0.20), 1.0: (0.20, 0.21, 0.22)},
    "adapter": {0.1: (0.15, 0.16, 0.17), 1.0: (0.31, 0.34, 0.37)},
}
TRAINABLE = {"scratch": 1000, "zero_shot": 0, "adapter": 50}


def records():
  out = []
  for strategy, by_fraction in VALUES.items():
    for fraction, values in by_fraction.items():
      for seed, v in enumerate(values):
        o = {"transfer.strategy": strategy, "data.user_fraction": fraction, "seed": seed}
        out.append({"key": ",".join(f"{k}={x}" for k, x in o.items()), "overrides": o, "status": "done",
                    "test": {"ndcg@10": v, "hr@10": 2 * v}, "valid": {"ndcg@10": 0.0},
                    "trainable_params": TRAINABLE[strategy]})
  return out


def p_df2(t):
  """Two-sided p of Student's t with 2 degrees of freedom: CDF(t) = 1/2 + t / (2 sqrt(2 + t^2))."""
  return 1.0 - abs(t) / math.sqrt(2.0 + t * t)


def test_mean_std_and_paired_t_test_match_hand_computation():
  assert tables.mean_std([0.10, 0.12, 0.14]) == pytest.approx((0.12, 0.02))
  assert math.isnan(tables.mean_std([0.3])[1])
  # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt(3)) = 2 sqrt(3)
  t, p = tables.paired_t_test([0.31, 0.34, 0.37], [0.30, 0.32, 0.34])
  assert t == pytest.approx(2 * math.sqrt(3)) and p == pytest.approx(p_df2(2 * math.sqrt(3)), rel=1e-9)
  assert p == pytest.approx(0.0742, abs=1e-4)
  t, p = tables.paired_t_test([0.15, 0.16, 0.17], [0.10, 0.12, 0.14])  # diffs .05 .04 .03: t = 4 sqrt(3)
  assert t == pytest.approx(4 * math.sqrt(3)) and p == pytest.approx(p_df2(4 * math.sqrt(3)), rel=1e-9)
  assert all(math.isnan(x) for x in tables.paired_t_test([0.2], [0.1]))
  # 95% t interval: t_{0.975, 2} = 4.302653 for 3 values with sd 0.02
  assert tables.t_interval([0.10, 0.12, 0.14]) == pytest.approx(4.302653 * 0.02 / math.sqrt(3), rel=1e-5)


def test_zero_variance_differences_are_never_p_zero():
  # identical columns: no difference, p = 1
  assert tables.paired_t_test([0.2, 0.3, 0.4], [0.2, 0.3, 0.4]) == (0.0, 1.0)
  # the same non-zero difference on every seed: exact sign-flip p = 2 / 2^n, never 0
  t, p = tables.paired_t_test([0.2, 0.3, 0.4], [0.1, 0.2, 0.3])
  assert t == math.inf and p == pytest.approx(2 / 8)
  t, p = tables.paired_t_test([0.1] * 5, [0.3] * 5)
  assert t == -math.inf and p == pytest.approx(2 / 32) and p > 0.05
  # sign flips by hand: d = (1, 2, 4), |mean| 7/3 reached only by the all-same-sign flips
  assert tables.sign_flip_p([1.0, 2.0, 4.0]) == pytest.approx(2 / 8)
  # d = (1, 1, -1): |mean| 1/3 is reached by 6 of the 8 flips (all but (+,+,+)->3 ... see below)
  flips = [(a, b, c) for a in (1, -1) for b in (1, -1) for c in (1, -1)]
  want = sum(abs(a * 1 + b * 1 - c * 1) / 3 >= 1 / 3 - 1e-12 for a, b, c in flips) / 8
  assert tables.sign_flip_p([1.0, 1.0, -1.0]) == pytest.approx(want)


def test_holm_matches_hand_computation():
  # sorted 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> running max 0.06)
  assert tables.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
  assert tables.holm([0.5, float("nan"), 0.01]) == pytest.approx([0.5, float("nan"), 0.02], nan_ok=True)
  assert tables.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])  # running max: never below an earlier one
  assert tables.holm([0.6, 0.7]) == [1.0, 1.0]


def test_paired_bootstrap_matches_the_exact_bootstrap_distribution():
  # d = (1, 0): a resample's mean is 0, 0.5 or 1 with prob 1/4, 1/2, 1/4; the observed mean 0.5;
  # |m* - 0.5| >= 0.5 has prob 1/2, so p -> 0.5; the 95% percentile interval is [0, 1].
  boot = tables.paired_bootstrap([1.0, 0.0], [0.0, 0.0], num_resamples=20_000, seed=3)
  assert boot["mean"] == 0.5 and boot["p"] == pytest.approx(0.5, abs=0.015)
  assert (boot["low"], boot["high"]) == (0.0, 1.0)
  # identical per-user values: p = 1 (not significant), zero-width interval
  same = np.linspace(0, 1, 50)
  assert tables.paired_bootstrap(same, same)["p"] == 1.0
  # a clear shift on many users is significant
  rng = np.random.default_rng(0)
  a = rng.random(500)
  assert tables.paired_bootstrap(a + 0.1, a, num_resamples=2000)["p"] < 0.01
  with pytest.raises(ValueError, match="equal-length"):
    tables.paired_bootstrap([], [])


def test_per_user_metrics_from_ranks_average_to_the_metrics():
  from xrec.evaluate import metrics as M
  ranks = np.array([0, 3, 9, 10, 49])
  assert tables.per_user_metric(ranks, "hr@10").tolist() == [1, 1, 1, 0, 0]
  np.testing.assert_allclose(tables.per_user_metric(ranks, "ndcg@10"), [1, 1 / np.log2(5), 1 / np.log2(11), 0, 0])
  np.testing.assert_allclose(tables.per_user_metric(ranks, "mrr@50"), 1 / (ranks + 1))
  sums = M.metric_sums(jnp.asarray(ranks), jnp.ones(5), ks=(10,))
  assert float(sums["ndcg@10"]) / 5 == pytest.approx(tables.per_user_metric(ranks, "ndcg@10").mean(), rel=1e-6)
  with pytest.raises(ValueError, match="like ndcg@10"):
    tables.per_user_metric(ranks, "auc")


def test_table_cells_ci_bold_and_holm_corrected_markers():
  table = tables.build(records(), LAYOUT, "ndcg@10")
  assert table.rows == ["scratch", "zero_shot", "adapter"] and table.columns == [(0.1,), (1.0,)]
  cell = lambda r, f: table.cells[(r, (f,))]  # noqa: E731
  # The family: 3 pairs per column. Raw p by hand (t with 2 df):
  #   0.1: {scratch, zero_shot} t = 4 sqrt 3, {adapter, scratch} 4 sqrt 3, {adapter, zero_shot} 4 sqrt 3
  #   1.0: {scratch, zero_shot} t = 11 sqrt 3, {adapter, scratch} 2 sqrt 3, {adapter, zero_shot} 6.5 sqrt 3
  r3 = math.sqrt(3)
  raw = {(0.1, "sz"): p_df2(4 * r3), (0.1, "as"): p_df2(4 * r3), (0.1, "az"): p_df2(4 * r3),
         (1.0, "sz"): p_df2(11 * r3), (1.0, "as"): p_df2(2 * r3), (1.0, "az"): p_df2(6.5 * r3)}
  order = sorted(raw, key=raw.get)
  adjusted, running = {}, 0.0
  for rank, key in enumerate(order):
    running = max(running, min(1.0, (6 - rank) * raw[key]))
    adjusted[key] = running
  assert table.comparisons == 6
  assert cell("zero_shot", 1.0).p["scratch"] == pytest.approx(adjusted[(1.0, "sz")])
  assert cell("scratch", 1.0).p["zero_shot"] == pytest.approx(adjusted[(1.0, "sz")])
  assert cell("adapter", 1.0).p["zero_shot"] == pytest.approx(adjusted[(1.0, "az")])
  assert cell("adapter", 0.1).p_raw["scratch"] == pytest.approx(raw[(0.1, "as")])
  assert cell("adapter", 0.1).p["scratch"] == pytest.approx(adjusted[(0.1, "as")])
  # uncorrected, the 0.1 column would be significant (p = 0.020); Holm over 6 tests makes it 0.081
  assert raw[(0.1, "as")] < 0.05 < adjusted[(0.1, "as")]
  assert adjusted[(1.0, "sz")] < 0.05 and adjusted[(1.0, "az")] < 0.05
  assert cell("zero_shot", 0.1).marks == "" and cell("adapter", 0.1).marks == ""
  assert cell("zero_shot", 1.0).marks == "▼"  # negative transfer: below scratch
  assert cell("scratch", 1.0).marks == "△" and cell("adapter", 1.0).marks == "△"
  assert cell("zero_shot", 0.1).best and cell("adapter", 1.0).best
  ci = 4.302653 * 0.03 / r3  # adapter at 1.0: sd 0.03 over 3 seeds
  assert cell("adapter", 1.0).ci == pytest.approx(ci, rel=1e-5)
  md = tables.to_markdown(table)
  assert f"| adapter | 0.1600 ± {4.302653 * 0.01 / r3:.4f} | **0.3400 ± {ci:.4f}**△ |" in md
  assert "Holm-Bonferroni corrected over the table's 6 comparisons" in md and "95% CI" in md

  gain = tables.build(records(), LAYOUT, "ndcg@10", "gain")
  assert gain.rows == ["zero_shot", "adapter"]
  assert gain.cells[("adapter", (1.0,))].mean == pytest.approx(0.02)
  assert gain.cells[("adapter", (1.0,))].p == cell("adapter", 1.0).p  # the same corrected family
  assert gain.cells[("adapter", (1.0,))].ci == pytest.approx(4.302653 * 0.01 / r3, rel=1e-5)


def test_identical_columns_are_not_significant():
  rs = records()
  for r in rs:  # every strategy equals scratch on every seed
    o = r["overrides"]
    r["test"] = dict(next(x for x in records() if x["overrides"] == {**o, "transfer.strategy": "scratch"})["test"])
  table = tables.build(rs, LAYOUT, "ndcg@10")
  assert all(c.marks == "" and all(p == 1.0 for p in c.p.values()) for c in table.cells.values())


def _single_seed_records(ranks_by_strategy, still_improving=(), first_eval=()):
  out = []
  for strategy, ranks in ranks_by_strategy.items():
    o = {"transfer.strategy": strategy}
    ndcg = float(tables.per_user_metric(ranks, "ndcg@10").mean())
    out.append({"key": f"transfer.strategy={strategy}", "overrides": o, "status": "done",
                "test": {"ndcg@10": ndcg}, "test_rank": list(ranks),
                "population": {"kind": "all", "users": len(ranks), "keys_sha256": "abc",
                               "description": f"all {len(ranks)} users of domain 'target'"},
                "best_step": 10 if strategy in first_eval else 50,
                "budget": {"num_steps": 100, "eval_every_steps": 10, "early_stopping_patience": 3,
                           "last_eval_step": 50 if strategy in still_improving else 80,
                           "best_is_last_eval": strategy in still_improving}})
  return out


def test_single_seed_tables_use_the_per_user_bootstrap():
  rng = np.random.default_rng(0)
  good = rng.integers(0, 5, size=300)  # most targets in the top 10
  bad = rng.integers(20, 200, size=300)
  rs = _single_seed_records({"scratch": bad, "zero_shot": bad, "full_finetune": good},
                            still_improving=("full_finetune",))
  layout = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": [], "seed": "seed"}
  table = tables.build(rs, layout, "ndcg@10")
  ft, zs = table.cells[("full_finetune", ())], table.cells[("zero_shot", ())]
  assert ft.test == {"scratch": "bootstrap", "zero_shot": "bootstrap"} and ft.marks == "▲△"
  assert zs.p["scratch"] == 1.0 and zs.marks == ""  # identical per-user ranks
  assert ft.ci > 0 and ft.still_improving == 1
  md = tables.to_markdown(table)
  assert "per-user paired bootstrap" in md and "95% CI from a per-user bootstrap (one seed)" in md
  assert f"| full_finetune | **{ft.mean:.4f} ± {ft.ci:.4f}**▲△† |" in md
  assert "Every cell is evaluated on the same 300 users (all 300 users of domain 'target')" in md
  assert "100 steps, validation every 10, early stopping after 3 evaluations" in md
  assert "‡" not in md  # no cell peaked at its first evaluation
  for r in rs:  # the caption names the extra early evaluations of train.eval_at_steps
    r["budget"]["eval_at_steps"] = [2, 4]
  assert "100 steps, validation every 10 and at steps 2, 4, early stopping after 3 regular evaluations" in \
      tables.to_markdown(tables.build(rs, layout, "ndcg@10"))


def test_a_cell_that_peaked_at_its_first_evaluation_is_marked_in_every_format():
  ranks = np.random.default_rng(1).integers(0, 50, size=100)
  rs = _single_seed_records({"scratch": ranks, "zero_shot": ranks, "full_finetune": ranks}, first_eval=("full_finetune",))
  layout = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": [], "seed": "seed"}
  table = tables.build(rs, layout, "ndcg@10")
  assert [table.cells[(s, ())].first_eval for s in ("scratch", "zero_shot", "full_finetune")] == [0, 0, 1]
  md = tables.to_markdown(table)
  assert "| full_finetune | " in md and [line for line in md.splitlines() if "‡" in line and "|" in line] == \
      [line for line in md.splitlines() if line.startswith("| full_finetune |")]
  assert "‡: the best validation step was the first evaluation after step 0" in md
  assert r"$\ddagger$" in tables.to_latex(table)
  row = [r for r in csv.DictReader(io.StringIO(tables.to_csv(table))) if r["row"] == "full_finetune"][0]
  assert row["peaked_at_first_eval"] == "1"
  # the first evaluation is the peak only when later ones were lower: a run whose only (last)
  # evaluation is its best is still improving (†), not ‡; zero_shot (no steps) never is
  base = {"best_step": 10, "budget": {"eval_every_steps": 10, "num_steps": 100, "last_eval_step": 10}}
  assert not tables.peaked_at_first_eval(base)
  assert tables.peaked_at_first_eval({**base, "budget": {**base["budget"], "last_eval_step": 30}})
  assert not tables.peaked_at_first_eval({"best_step": 0, "budget": {"eval_every_steps": 10, "num_steps": 0}})
  assert not tables.peaked_at_first_eval({"best_step": 20, "budget": {**base["budget"], "last_eval_step": 30}})
  # with extra early evaluations (train.eval_at_steps) the first of them is the first evaluation
  early = {**base["budget"], "last_eval_step": 30, "eval_at_steps": [2, 4]}
  assert tables.peaked_at_first_eval({"best_step": 2, "budget": early})
  assert not tables.peaked_at_first_eval({"best_step": 10, "budget": early})


def test_percentages_never_round_to_all_or_nothing():
  assert [tables.percent(x) for x in (0.25, 0.9996, 0.99999, 1.0, 0.0, 0.0004, 0.123)] == \
      ["25.0%", "99.96%", "99.999%", "100.0%", "0.0%", "0.04%", "12.3%"]
  assert [tables.percent(x) for x in (1e-9, 1 - 1e-9, float("nan"))] == ["<0.0001%", ">99.9999%", "n/a"]


def test_zero_shot_on_a_disjoint_catalogue_is_na():
  rs = _single_seed_records({"scratch": np.arange(50), "zero_shot": np.full(50, 400)})
  rs[1]["not_applicable"] = "n/a (item overlap 0%): the source knows 0.0% of the target's interactions"
  layout = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": [], "seed": "seed"}
  table = tables.build(rs, layout, "ndcg@10")
  zs = table.cells[("zero_shot", ())]
  assert zs.not_applicable and not zs.best and not table.cells[("scratch", ())].p  # nothing to compare
  assert "| zero_shot | n/a (item overlap 0%) |" in tables.to_markdown(table)
  assert "n/a (item overlap 0\\%)" in tables.to_latex(table)
  assert "n/a (item overlap 0%)" in tables.to_csv(table)


def test_markdown_latex_csv_agree():
  table = tables.build(records(), LAYOUT, "ndcg@10")
  md_rows = {line.split(" | ")[0].lstrip("| "): line for line in tables.to_markdown(table).splitlines()
             if line.startswith("| ") and "---" not in line}
  tex_rows = {line.split(" & ")[0].replace("\\_", "_"): line for line in tables.to_latex(table).splitlines()
              if " & " in line}
  rows = list(csv.DictReader(io.StringIO(tables.to_csv(table))))
  assert len(rows) == 6
  tex_marks = {v: k for k, v in tables.LATEX_MARKERS.items()}
  for r in rows:
    column = ["user_fraction=0.1", "user_fraction=1"].index(r["column"])
    text = f"{float(r['mean']):.4f} ± {float(r['ci95']):.4f}"
    md_cell = md_rows[r["row"]].strip("| ").split(" | ")[column + 1]
    assert md_cell == (f"**{text}**" if r["best"] == "1" else text) + r["marks"]
    tex_cell = tex_rows[r["row"]].rstrip(" \\").split(" & ")[column + 1]
    assert text.replace(" ± ", r" $\pm$ ") in tex_cell
    assert tex_cell.startswith(r"\textbf{") == (r["best"] == "1")
    tex_names = tex_cell.split("$^{")[1].rstrip("}$").split("\\")[1:] if "$^{" in tex_cell else []
    shown = "".join(tex_marks["\\" + name] for name in tex_names)
    assert shown == r["marks"]
    values = [float(x.split(":")[1]) for x in r["values"].split(";")]
    assert tables.mean_std(values)[0] == pytest.approx(float(r["mean"]), abs=1e-6)
  assert tables.to_latex(table).startswith("\\begin{tabular}{lrr}\n\\toprule\nstrategy & user\\_fraction=0.1")


def test_tuning_section_names_candidates_halving_dropped_while_improving():
  from xrec.report import tuning_section
  rs = records()[:2]
  dropped = [{"overrides": {"optim.lr": 0.0003}, "stage": "a", "rung_step": 500, "valid_so_far": 0.0565,
              "best_step_so_far": 500, "improving": True, "kept_valid_so_far": 0.0567},
             {"overrides": {"optim.lr": 0.003}, "stage": "b", "rung_step": 500, "valid_so_far": 0.0537,
              "best_step_so_far": 150, "improving": False, "kept_valid_so_far": 0.0567}]
  rs[0] = dict(rs[0], tuning={"metric": "valid ndcg@10", "tuned": {"optim.lr": [0.0003, 0.001, 0.003]},
                              "chosen": {"optim.lr": 0.001}, "halving": {"eta": 3, "rungs": [500], "dropped": dropped}})
  rs[1] = dict(rs[1], tuning={"metric": "valid ndcg@10", "tuned": {"optim.lr": [0.0003, 0.001, 0.003]},
                              "chosen": {"optim.lr": 0.003}})
  lines = tuning_section({"layout": LAYOUT}, rs)
  text = "\n".join(lines)
  assert "lr 0.003 (edge)" in text and "lr 0.001 (edge)" not in text and "lr 0.001" in text
  named = [line for line in lines if "dropped at step" in line]
  assert named == ["- scratch, 0.1, seed 0: lr 0.0003 dropped at step 500 while still improving (valid 0.0565 at "
                   "its last evaluation; the kept candidates' best so far 0.0567)"]
  reused = dict(rs[0], key="seed 1", overrides={**rs[0]["overrides"], "seed": 1},
                tuning=dict(rs[0]["tuning"], tuned_on_seed=0, tuning_from_record=rs[0]["key"]))
  ran_grid = dict(reused, key="seed 2", overrides={**rs[0]["overrides"], "seed": 2},  # --jobs: ran seed 0's grid
                  tuning=dict(rs[0]["tuning"], tuned_on_seed=0))                   # itself, before seed 0's cell
  lines = tuning_section({"layout": LAYOUT}, rs + [reused, ran_grid])  # one grid: its drops listed once
  assert [line for line in lines if "dropped at step" in line] == named
  lines = tuning_section({"layout": LAYOUT}, [reused, rs[1]])  # seed 0's record not here: still under seed 0
  assert [line for line in lines if "dropped at step" in line] == named
  # seed 0's grid and the seeds that trained its choice are counted together; a reusing seed whose own
  # run stayed at step 0 says so (not "none moved": it had one candidate, the grid's choice)
  stuck = dict(reused, key="seed 3", overrides={**rs[0]["overrides"], "seed": 3},
               tuning=dict(reused["tuning"], candidates=[{"overrides": {"optim.lr": 0.001}, "best_step": 0}]))
  row = next(line for line in tuning_section({"layout": LAYOUT}, [rs[0], reused, stuck]) if line.startswith("| scratch"))
  assert row == "| scratch | lr 0.001 [tuned on seed 0] ×2; lr 0.001, best at step 0 [tuned on seed 0] ×1 |", row
  rs[0]["tuning"]["halving"]["dropped"] = dropped[1:]  # the other was past its best: nothing to say
  assert not [line for line in tuning_section({"layout": LAYOUT}, rs) if "improving" in line]


def test_unnamed_swept_field_fails_naming_it():
  rs = records()
  extra = dict(rs[0], overrides={**rs[0]["overrides"], "transfer.lr_mult": 0.5}, key="other")
  with pytest.raises(ValueError, match=r"varies \['transfer.lr_mult'\].*'columns'"):
    tables.build(rs + [extra], LAYOUT, "ndcg@10")
  with pytest.raises(ValueError, match=r"metric 'ndcg@7' is not in the results; valid: \['hr@10', 'ndcg@10'\]"):
    tables.build(rs, LAYOUT, "ndcg@7")


def test_report_cli_writes_tables_and_plots(tmp_path):
  wd = tmp_path / "study"
  wd.mkdir()
  rs = records()
  cells = [{"index": i, "key": r["key"], "overrides": r["overrides"]} for i, r in enumerate(rs)]
  cells.append({"index": len(rs), "key": "transfer.strategy=lora", "overrides": {"transfer.strategy": "lora"}})
  layout = dict(LAYOUT, metrics=["ndcg@10", "hr@10"])
  (wd / "study.json").write_text(json.dumps({"config_file": "x.py", "layout": layout, "cells": cells}))
  failed = {"key": "transfer.strategy=lora", "status": "failed", "error": "ValueError: boom"}
  (wd / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs + [failed]) + '{"cut by a ki')
  out = subprocess.run([sys.executable, "-m", "xrec.report", str(wd)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| zero_shot | **0.2000 ± 0.0000** | 0.2100 ± 0.0248▼ |" in out.stdout
  assert "| 18 | transfer.strategy=lora | failed | ValueError: boom |" in out.stdout
  report = wd / "report"
  for name in ("ndcg_at_10", "hr_at_10", "gain_ndcg_at_10"):
    for ext in ("md", "tex", "csv"):
      assert (report / f"table_{name}.{ext}").stat().st_size > 0
  pngs = sorted(os.path.basename(p) for p in glob.glob(str(report / "*.png")))
  assert pngs == ["gain_hr_at_10_vs_data_user_fraction.png", "gain_ndcg_at_10_vs_data_user_fraction.png",
                  "hr_at_10_vs_data_user_fraction.png", "hr_at_10_vs_trainable_params.png",
                  "ndcg_at_10_vs_data_user_fraction.png", "ndcg_at_10_vs_trainable_params.png"]
  assert all(open(report / p, "rb").read(8) == b"\x89PNG\r\n\x1a\n" for p in pngs)
  with pytest.raises(FileNotFoundError, match="no study directory"):
    from xrec import report as R
    R.write_report(str(tmp_path))


def test_a_one_run_report_has_its_table_no_plot_and_imports_neither_matplotlib_nor_scipy(tmp_path):
  """Every launch writes its report: a single run's (one cell, one seed) has one number and nothing
  to plot or test, and skips the two imports (about 2.3 s of each launch)."""
  wd = tmp_path / "run"
  wd.mkdir()
  r = records()[0]
  layout = dict(LAYOUT, columns=[])
  (wd / "study.json").write_text(json.dumps({"config_file": "x.py", "layout": layout, "cells": [
      {"index": 0, "key": r["key"], "overrides": r["overrides"]}]}))
  (wd / "runs.jsonl").write_text(json.dumps(r) + "\n")
  code = ("import sys; from xrec import report; out = report.write_report(sys.argv[1]); "
          "print(sorted(m for m in ('matplotlib', 'scipy.stats') if m in sys.modules)); print(out['markdown'])")
  out = subprocess.run([sys.executable, "-c", code, str(wd)], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith("[]\n") and "| scratch | **0.1000** |" in out.stdout, out.stdout
  assert (wd / "report" / "table_ndcg_at_10.md").exists() and not glob.glob(str(wd / "report" / "*.png"))


@pytest.mark.parametrize("path, arg", [
    ("experiments/fraction_study/config.py", None), ("experiments/shift_study/config.py", None),
    ("experiments/real_data/ml1m_cross_region.py", None), ("experiments/real_data/ml1m_cross_genre.py", None),
    ("experiments/real_data/cross_app.py", "amazon2018"), ("experiments/toolbox/config.py", None),
    ("experiments/distill_prune/config.py", None), ("experiments/augment/config.py", None),
    ("experiments/cross_user/config.py", None), ("experiments/real_data/adversarial.py", "ml1m_cross_region,cpu"),
    ("experiments/real_data/overlap.py", "ml1m_cross_genre"), ("experiments/real_data/compress.py", "ml1m_cross_region"),
    ("experiments/real_data/augment.py", "cross_app,amazon2018"),
    ("experiments/selection/config.py", None), ("experiments/selection/sources.py", None), ("experiments/real_data/selection.py", "ml1m_cross_region,cpu"),
    ("experiments/text_transfer/config.py", None), ("experiments/text_transfer/signal.py", None),
    ("experiments/real_data/text.py", "ml1m_cross_genre,cpu"), ("experiments/text_tower/cpu.py", None)])
def test_study_configs_load_and_every_cell_applies(path, arg):
  from xrec.train import experiment, loop, runner
  module = runner.load_config_module(os.path.join(ROOT, path))
  config = module.get_config(arg)
  cells = runner.cells_of(module)
  layout = runner.layout_of(module)
  for cell in cells:
    c = runner.apply_overrides(config, cell.overrides)
    loop.validate(c)  # names and ranges, the objective's terms on this encoder (BERT4Rec: no full_softmax)
    loop.validate(experiment.pretrain_config(c))
    if c.transfer.strategy == "prune" and c.transfer.prune.kind == "heads":  # half of one head is none
      assert int(c.transfer.prune.ratio * c.model[c.model.name].num_heads) >= 1
    prereq, candidates, _ = runner.plan_stages(c, "/tmp/stages")
    assert [s.kind for s in prereq] == ([] if c.transfer.strategy == "scratch" else ["pretrain"])
    assert {s.kind for s in candidates} == {"transfer"}
    # the protocol: tuned learning rates (zero_shot trains nothing), a budget in steps
    assert len(candidates) == (1 if c.transfer.strategy == "zero_shot" else len(c.tune.lr)) and c.tune.lr
    assert c.train.num_steps >= c.train.eval_every_steps and c.data.eval_population == "all"
  seeds = {cell.overrides["seed"] for cell in cells}
  assert len(seeds) >= 5
  assert layout["columns"][0] in cells[0].overrides
  assert f"--config {path}" in module.__doc__ or f"--config {path}:" in module.__doc__


@pytest.mark.parametrize("path, arg", [("experiments/real_data/ml1m_cross_region.py", "cpu"),
                                       ("experiments/real_data/overlap.py", "ml1m_cross_genre,cpu")])
def test_one_pretraining_shares_the_seed_0_source_model_with_every_seed(path, arg):
  from xrec.train import runner
  module = runner.load_config_module(os.path.join(ROOT, path))

  def pretrainings(arg):
    config, out = module.get_config(arg), {}
    cells = [c for c in runner.cells_of(module) if c.overrides["transfer.strategy"] != "scratch"]
    first = {k: cells[0].overrides[k] for k in cells[0].overrides if k not in ("seed", "data.fraction_seed")}
    for cell in cells:  # the first transferring cell's strategy and fraction: a cell of every seed
      if any(cell.overrides.get(k) != v for k, v in first.items()):
        continue
      prereq, _, _ = runner.plan_stages(runner.apply_overrides(config, cell.overrides), "/tmp/stages")
      out.setdefault(cell.overrides["seed"], set()).update(s.hash for s in prereq if s.kind == "pretrain")
    return out
  own, shared = pretrainings(arg), pretrainings(arg + ",one_pretraining")
  assert len(set().union(*own.values())) == len(own) >= 5  # by default each seed pretrains its own
  assert all(hashes == own[0] for hashes in shared.values())  # one: seed 0's, for every seed
  with pytest.raises(ValueError, match="one_pretraining"):
    module.get_config(arg + ",one_pretrain")


def test_the_report_lists_a_shared_pretraining_once_with_its_seeds():
  from xrec import report as R
  pre = {"valid": {"ndcg@10": 0.15}, "test": {"ndcg@10": 0.14}, "best_step": 100, "budget": {}}
  done = [{"overrides": {"seed": s}, "stages": {"pretrain": "abc"}, "pretrain": pre} for s in (0, 1, 2)]
  lines = "\n".join(R.pretraining_section(done))
  assert "| abc (seeds 0, 1, 2) | 0.1500 |" in lines and "one_pretraining" in lines
  own = [{"overrides": {"seed": s}, "stages": {"pretrain": f"p{s}"}, "pretrain": pre} for s in (0, 1)]
  lines = "\n".join(R.pretraining_section(own))
  assert "| p0 (seed 0) |" in lines and "| p1 (seed 1) |" in lines and "one_pretraining" not in lines


def test_compare_two_runs_of_a_study(tmp_path):
  from xrec.report import compare

  def write(wd, shift):
    wd.mkdir()
    rs = records()
    for r in rs:
      if r["overrides"]["transfer.strategy"] == "adapter" and r["overrides"]["data.user_fraction"] == 1.0:
        r["test"] = {k: v + shift for k, v in r["test"].items()}
    cells = [{"index": i, "key": r["key"], "overrides": r["overrides"]} for i, r in enumerate(rs)]
    (wd / "study.json").write_text(json.dumps({"config_file": "x.py", "layout": LAYOUT, "cells": cells}))
    (wd / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    return str(wd)
  before, small, large = write(tmp_path / "a", 0.0), write(tmp_path / "b", 0.01), write(tmp_path / "c", 0.3)
  assert compare.compare(before, small)["within"] == 6
  moved = compare.compare(before, large)
  assert moved["within"] == 5 and [r["row"] for r in moved["rows"] if not r["within"]] == ["adapter"]
  assert "**no**" in compare.to_markdown(moved) and "5 of 6 cells within noise" in compare.to_markdown(moved)
  # cell by cell: a rerun of some cells (here all) after a change that moves nothing, and one that moves a row
  same = compare.compare_cells(before, small)
  moved_cells = [r for r in same["rows"] if r["max_abs_diff"] > 0]
  assert same["cells"] == len(records()) and same["identical"] == same["cells"] - len(moved_cells)
  assert moved_cells and all("transfer.strategy=adapter" in r["key"] and "data.user_fraction=1.0" in r["key"]
                             and abs(r["max_abs_diff"] - 0.01) < 1e-9 for r in moved_cells)
  assert compare.compare_cells(before, before)["identical"] == len(records())
  assert "cells identical" in compare.cells_markdown(same)


def _study(wd, means: dict, seeds: int = 6, field: str = "data.user_fraction"):
  """A study directory whose strategy x column cells have the given means plus seeded noise (sd
  0.004 over 6 seeds: differences of 0.05 are significant, equal means are not)."""
  wd.mkdir()
  noise = np.random.default_rng(zlib.crc32(wd.name.encode())).normal(0, 0.004, (len(means), seeds))
  rs = []
  for i, (strategy, by_column) in enumerate(means.items()):
    for value, mean in by_column.items():
      for seed in range(seeds):
        o = {"transfer.strategy": strategy, field: value, "seed": seed}
        rs.append({"key": ",".join(f"{k}={x}" for k, x in o.items()), "overrides": o, "status": "done",
                   "test": {"ndcg@10": mean + float(noise[i, seed])}})
  cells = [{"index": i, "key": r["key"], "overrides": r["overrides"]} for i, r in enumerate(rs)]
  layout = dict(LAYOUT, columns=[field])
  (wd / "study.json").write_text(json.dumps({"config_file": "x.py", "layout": layout, "cells": cells}))
  (wd / "runs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
  return str(wd)


SYNTHETIC = {"scratch": {0.1: 0.10, 1.0: 0.30}, "zero_shot": {0.1: 0.20, 1.0: 0.20},
             "adapter": {0.1: 0.20, 1.0: 0.25}, "lora": {0.1: 0.20, 1.0: 0.30}, "prompt": {0.1: 0.2, 1.0: 0.2}}
REAL = {"scratch": {0.05: 0.10, 1.0: 0.30}, "zero_shot": {0.05: 0.20, 1.0: 0.20},
        "adapter": {0.05: 0.20, 1.0: 0.40}, "lora": {0.05: 0.20, 1.0: 0.25}, "bitfit": {0.05: 0.2, 1.0: 0.2}}


def test_findings_of_two_studies_hold_reverse_or_show_in_one_only(tmp_path):
  from xrec.report import compare
  synthetic, real = _study(tmp_path / "synthetic", SYNTHETIC), _study(tmp_path / "real", REAL)
  with pytest.raises(ValueError, match=r"share no column.*--columns"):
    compare.findings(synthetic, _study(tmp_path / "other", {"scratch": {0.5: 0.1}, "adapter": {0.5: 0.2}}))
  with pytest.raises(ValueError, match=r"values the studies lack: first \[0.2\].*valid: first \[0.1, 1.0\]"):
    compare.findings(synthetic, real, columns=compare.parse_columns("0.2=0.05"))
  # another column field (the synthetic overlap study's user_overlap against a real user_fraction):
  # refused unless --columns names the pairs, then compared on them with both labels
  overlap = _study(tmp_path / "overlap", {k: {1.0: v[0.1]} for k, v in SYNTHETIC.items()},
                   field="data.synthetic.user_overlap")
  with pytest.raises(ValueError, match=r"sweep different columns.*pair the cells to compare with --columns"):
    compare.findings(overlap, real)
  across = compare.findings(overlap, real, columns=compare.parse_columns("1=0.05"))
  assert {r["row"]: r["verdict"] for r in across["rows"]} == {"zero_shot": "yes", "adapter": "yes", "lora": "yes"}
  assert "| adapter | user_overlap=1 / user_fraction=0.05 |" in compare.findings_markdown(across)
  assert "user_overlap=1 / user_fraction=0.05: " in compare.findings_markdown(across)
  result = compare.findings(synthetic, real, columns=compare.parse_columns("0.1=0.05, 1=1.0"))
  got = {(r["row"], r["columns"][0]): (r["vs_scratch"], r["vs_zero_shot"], r["verdict"]) for r in result["rows"]}
  assert got == {
      ("zero_shot", "user_fraction=0.1"): (("above", "above"), ("-", "-"), "yes"),
      ("adapter", "user_fraction=0.1"): (("above", "above"), ("level", "level"), "yes"),
      ("lora", "user_fraction=0.1"): (("above", "above"), ("level", "level"), "yes"),
      ("zero_shot", "user_fraction=1"): (("below", "below"), ("-", "-"), "yes"),
      ("adapter", "user_fraction=1"): (("below", "above"), ("above", "above"), "reversed"),
      ("lora", "user_fraction=1"): (("level", "below"), ("above", "above"), "one study only")}
  assert (result["holds"], result["findings"], result["reversed"]) == (4, 6, 1)
  assert result["only"]["rows"] == [["prompt"], ["bitfit"]]  # one study's strategies: listed, not compared
  top = result["best"][1]  # at 100%: lora level with scratch in the first, adapter far above it in the second
  assert top["first"] in ("scratch", "lora") and top["second"] == "adapter" and not top["same"]
  cell = lambda mean: tables.TableCell(values={0: mean}, mean=mean, std=0.0, ci=0.0, p={}, p_raw={}, test={})
  tie = tables.Table("ndcg@10", "gain", "transfer.strategy", [], ["a", "b"], [()], {("a", ()): cell(0.1),
                                                                                     ("b", ()): cell(0.1)})
  assert compare._largest(tie, (), ["scratch", "a", "b"]) is None  # a tie names no strategy
  assert compare._largest(tie, (), ["scratch", "a"]) == "a"
  text = compare.findings_markdown(result)
  assert "4 of 6 findings hold" in text and "1 reversed" in text and "**no**: reversed" in text
  assert "| adapter | user_fraction=0.1 / user_fraction=0.05 |" in text and " / adapter (differ)" in text
  assert "strategies of one study only: first ['prompt']; second ['bitfit']" in text
  matched = compare.findings(synthetic, _study(tmp_path / "half", {k: {1.0: v[1.0]} for k, v in REAL.items()}))
  assert matched["only"]["columns"] == [["user_fraction=0.1"], []] and len(matched["rows"]) == 3


def test_findings_compare_only_what_both_studies_tested(tmp_path, capsys):
  """A baseline one study lacks (zero_shot n/a or not run) leaves the verdict to scratch; a cell
  whose test could not run (one seed, no per-user ranks) is not comparable, not 'level'."""
  from xrec.report import compare
  synthetic = _study(tmp_path / "synthetic", SYNTHETIC)
  no_zero_shot = _study(tmp_path / "nozs", {k: v for k, v in REAL.items() if k != "zero_shot"})
  result = compare.findings(synthetic, no_zero_shot, columns={0.1: 0.05, 1.0: 1.0})
  got = {(r["row"], r["columns"][0]): (r["vs_zero_shot"], r["verdict"]) for r in result["rows"]}
  assert got[("adapter", "user_fraction=0.1")] == (("level", "-"), "yes")
  assert got[("lora", "user_fraction=1")] == (("above", "-"), "one study only")
  one_seed = _study(tmp_path / "one", REAL, seeds=1)
  result = compare.findings(synthetic, one_seed, columns={0.1: 0.05, 1.0: 1.0})
  assert {r["verdict"] for r in result["rows"]} == {"not comparable"} and result["findings"] == 0
  assert result["rows"][1]["vs_scratch"] == ("above", "untested")
  assert compare.main([synthetic, one_seed, "--findings", "--columns", "0.1=0.05,1=1"]) == 0
  assert "0 of 0 findings hold" in capsys.readouterr().out
  with pytest.raises(SystemExit):
    compare.main([synthetic, one_seed, "--columns", "0.1=0.05"])  # --columns means --findings
  assert "add --findings" in capsys.readouterr().err


def test_row_detail_splits_one_strategy_into_its_variants():
  rng = np.random.default_rng(1)
  rs = _single_seed_records({"scratch": rng.integers(20, 200, 100), "cross_user": rng.integers(0, 5, 100)})
  prefix = copy.deepcopy(rs[1])
  prefix["overrides"] = {**prefix["overrides"], "transfer.cross_user.mode": "prefix"}
  rs[1]["overrides"] = {**rs[1]["overrides"], "transfer.cross_user.mode": "merged"}
  layout = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": [], "seed": "seed",
            "row_detail": "transfer.cross_user.mode"}
  table = tables.build(rs + [prefix], layout, "ndcg@10")
  assert table.rows == ["scratch", "cross_user:merged", "cross_user:prefix"]
  assert table.cells[("cross_user:prefix", ())].marks.startswith("▲")  # each variant against scratch
  with pytest.raises(ValueError, match=r"fall in the same table slot"):  # without it: one slot, an error
    tables.build(rs + [prefix], dict(layout, row_detail=""), "ndcg@10")


def test_speed_plot_puts_quality_against_the_served_models_users_per_second(tmp_path):
  from xrec.report import plots
  rng = np.random.default_rng(2)
  rs = _single_seed_records({"scratch": rng.integers(20, 200, 100), "prune": rng.integers(0, 5, 100)})
  rs[0]["serving"] = {"eval_users_per_second": 1000.0}
  rs[1]["serving"] = {"eval_users_per_second": 2500.0, "model": "pruned, dense"}
  layout = {"metrics": ["ndcg@10"], "rows": "transfer.strategy", "columns": [], "seed": "seed", "speed_plot": True}
  table = tables.build(rs, layout, "ndcg@10")
  assert plots.speed_by_slot(rs, layout) == {("scratch", ()): 1000.0, ("prune", ()): 2500.0}
  paths = plots.write_plots(table, rs, layout, str(tmp_path))
  assert str(tmp_path / "ndcg_at_10_vs_users_per_s.png") in paths
  assert open(tmp_path / "ndcg_at_10_vs_users_per_s.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
  assert not any("users_per_s" in p for p in plots.write_plots(table, rs, dict(layout, speed_plot=False),
                                                                str(tmp_path / "none") if os.makedirs(tmp_path / "none") is None else ""))


@pytest.mark.parametrize("preset", ["cpu", "full"])
def test_the_real_data_presets_pretrain_to_convergence_with_the_reference_recipe(preset):
  """REAL_DATA_PRESETS (issue 27): the source model trains as long as the reproduction's (up to 200
  epochs, early stopping after 10 evaluations), never the 20 epochs that left it at 0.02 NDCG@10."""
  from xrec.train import runner
  module = runner.load_config_module(os.path.join(ROOT, "experiments", "real_data", "ml1m_cross_region.py"))
  c = module.get_config(preset)
  pre = c.experiment.pretrain.train
  assert pre.num_epochs == 200.0 and pre.early_stopping_patience == 10
  assert c.train.num_steps >= 1500 and c.train.early_stopping_patience == 5
  assert c.model.sasrec.block == "reference" and c.model.item_init_std == 0.02 and c.model.embed_dim == 64
  assert c.tune.seed == 0 and c.tune.halving == 3 and len(c.tune.lr) == 3  # tune once, with halving
  assert c.tune.extend_at_edge == 2  # up to two rates past an edge (cross-region: 6 of 15 rows at the once-extended edge)
  # target cells are evaluated early too (fine-tuning on 164 users peaked within 50 steps); the
  # pretraining is not, and its stage hash is that of a config without the field (neutral default)
  assert c.train.eval_at_steps == runner.EARLY_EVALS and max(runner.EARLY_EVALS) < c.train.eval_every_steps
  from xrec.train import experiment
  pre_cfg = experiment.pretrain_config(c)
  assert tuple(pre_cfg.train.eval_at_steps) == ()
  without = copy.deepcopy(pre_cfg)
  with without.unlocked():
    del without.train["eval_at_steps"]
  assert experiment.stage_hash(pre_cfg) == experiment.stage_hash(without)
  with pytest.raises(ValueError, match=r"Unknown config argument\(s\) \['short'\]"):
    module.get_config("short")


def test_the_reproduction_rows_load_validate_and_differ_only_where_their_docstring_says():
  """experiments/reproduce/config.py: every row applies and passes the door's checks; each row is
  named in the module's docstring; the ablation rows change one thing of the row they ablate."""
  from xrec.train import loop, runner
  module = runner.load_config_module(os.path.join(ROOT, "experiments", "reproduce", "config.py"))
  config = module.get_config()
  rows = {}
  for cell in runner.cells_of(module):
    c = runner.apply_overrides(config, cell.overrides)
    loop.validate(c)
    assert c.train.early_stopping_patience > 0 and c.eval.mask_history
    rows[cell.overrides["experiment.variant"]] = c
    variant = cell.overrides["experiment.variant"]  # by name, or as <name>_<model> for the Amazon files
    assert variant in module.__doc__ or "<name>_" + variant.split("_", 1)[1] in module.__doc__
  assert {"ml1m_sasrec", "beauty_sasrec", "ml1m_sasrec_dropout01", "beauty_sasrec_bce"} <= set(rows)

  def differences(a, b):
    from xrec import config as config_lib
    da, db = config_lib.dotted(a.to_dict()), config_lib.dotted(b.to_dict())
    return {k for k in da if da[k] != db.get(k) and k != "experiment.variant"}
  assert differences(rows["ml1m_sasrec_dropout01"], rows["ml1m_sasrec"]) == {"model.dropout"}
  assert differences(rows["beauty_sasrec_bce"], rows["beauty_sasrec"]) == {"objective.terms"}
  assert differences(rows["ml1m_sasrec_refcode"], rows["ml1m_sasrec"]) == {
      "model.dropout", "model.sasrec.block", "model.item_init_std"}
  assert differences(rows["ml1m_sasrec_refblock"], rows["ml1m_sasrec"]) == {"model.sasrec.block"}
  assert differences(rows["ml1m_sasrec_init002"], rows["ml1m_sasrec"]) == {"model.item_init_std"}
  assert differences(rows["ml1m_sasrec_refcode_left"], rows["ml1m_sasrec_refcode"]) == {"model.sasrec.positions"}
  assert differences(rows["ml1m_sasrec_refcode_dropinit"], rows["ml1m_sasrec_refcode"]) == {
      "model.sasrec.attention_dropout", "model.sasrec.kernel_init_std"}
  assert differences(rows["ml1m_sasrec_plus"], rows["ml1m_sasrec_refcode"]) == {
      "model.sasrec.positions", "model.sasrec.attention_dropout", "model.sasrec.kernel_init_std",
      "data.preprocess.item_core"}
  assert differences(rows["ml1m_sasrec_refcode_core5"], rows["ml1m_sasrec_refcode"]) == {"data.preprocess.item_core"}
  assert differences(rows["ml1m_sasrec_plus_nobias"], rows["ml1m_sasrec_plus"]) == {"model.output_bias"}
  assert differences(rows["ml1m_sasrec_plus_adam"], rows["ml1m_sasrec_plus"]) == {
      "optim.b2", "optim.clip_norm", "optim.warmup_fraction"}


def test_the_real_compress_study_has_every_cell_of_the_synthetic_one():
  """compress.py mirrors experiments/distill_prune (issue 27's toolbox table on real data), so that
  compare --findings pairs them cell by cell: the same column field and values, every synthetic
  (strategy, prune kind, width) cell, and the same distillation weights."""
  from xrec.train import runner
  real = runner.load_config_module(os.path.join(ROOT, "experiments", "real_data", "compress.py"))
  synthetic = runner.load_config_module(os.path.join(ROOT, "experiments", "distill_prune", "config.py"))
  assert real.metrics()["columns"] == synthetic.metrics()["columns"] == "model.embed_dim"
  slots = lambda module: {(c["transfer.strategy"], c.get("transfer.prune.kind"), c["model.embed_dim"])  # noqa: E731
                          for c in module.sweep()}
  assert slots(synthetic) <= slots(real) and slots(real) - slots(synthetic) == {("prune", "mlp", 64)}
  c, s = real.get_config("ml1m_cross_region,cpu"), synthetic.get_config()
  assert (c.transfer.distill.logit_weight, c.transfer.distill.ranking_weight) == (
      s.transfer.distill.logit_weight, s.transfer.distill.ranking_weight)
  assert c.data.user_fraction == s.data.user_fraction == 0.2
