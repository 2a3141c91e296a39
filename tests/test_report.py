"""Report math on fixed numbers (hand-computed), the three table formats agree, the CLI, study configs."""

import csv
import glob
import io
import json
import math
import os
import subprocess
import sys

import pytest

from xrec.report import tables as T

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
  assert T.mean_std([0.10, 0.12, 0.14]) == pytest.approx((0.12, 0.02))
  assert math.isnan(T.mean_std([0.3])[1])
  # differences 0.01, 0.02, 0.03: mean 0.02, sd 0.01, t = 0.02 / (0.01 / sqrt(3)) = 2 sqrt(3)
  t, p = T.paired_t_test([0.31, 0.34, 0.37], [0.30, 0.32, 0.34])
  assert t == pytest.approx(2 * math.sqrt(3)) and p == pytest.approx(p_df2(2 * math.sqrt(3)), rel=1e-9)
  assert p == pytest.approx(0.0742, abs=1e-4)  # not significant at 0.05
  t, p = T.paired_t_test([0.15, 0.16, 0.17], [0.10, 0.12, 0.14])  # diffs .05 .04 .03: t = 4 sqrt(3)
  assert t == pytest.approx(4 * math.sqrt(3)) and p == pytest.approx(p_df2(4 * math.sqrt(3)), rel=1e-9)
  assert p == pytest.approx(0.0202, abs=1e-4)  # significant
  assert T.paired_t_test([0.2, 0.3], [0.1, 0.2]) == (math.inf, 0.0)  # identical gains
  assert T.paired_t_test([0.2, 0.3], [0.2, 0.3]) == (0.0, 1.0)
  assert all(math.isnan(x) for x in T.paired_t_test([0.2], [0.1]))


def test_table_cells_bold_and_markers():
  table = T.build(records(), LAYOUT, "ndcg@10")
  assert table.rows == ["scratch", "zero_shot", "adapter"] and table.columns == [(0.1,), (1.0,)]
  cell = lambda r, f: table.cells[(r, (f,))]  # noqa: E731
  # fraction 0.1: zero_shot (0.20) is best and beats scratch (t = 0.08 / (0.02 / sqrt 3), p = 0.020);
  # adapter beats scratch (p = 0.020) and loses to zero_shot (diffs -.05 -.04 -.03, p = 0.020)
  assert cell("zero_shot", 0.1).best and not cell("adapter", 0.1).best
  assert cell("zero_shot", 0.1).marks == "▲"
  assert cell("zero_shot", 0.1).p["scratch"] == pytest.approx(p_df2(0.08 / (0.02 / math.sqrt(3))))
  assert cell("adapter", 0.1).marks == "▲▽"
  assert cell("scratch", 0.1).marks == "▽"  # worse than zero_shot: diffs -.1 -.08 -.06
  # fraction 1.0: adapter best (0.34 ± 0.03), not significantly above scratch (p = 0.074), above zero_shot
  assert cell("adapter", 1.0).best and cell("adapter", 1.0).mean == pytest.approx(0.34)
  assert cell("adapter", 1.0).std == pytest.approx(0.03) and cell("adapter", 1.0).marks == "△"
  assert cell("adapter", 1.0).p["zero_shot"] == pytest.approx(p_df2(0.13 / (0.02 / math.sqrt(3))))
  assert cell("zero_shot", 1.0).marks == "▼"  # diffs -.1 -.11 -.12 vs scratch
  md = T.to_markdown(table)
  assert "| zero_shot | **0.2000 ± 0.0000**▲ | 0.2100 ± 0.0100▼ |" in md
  assert "| adapter | 0.1600 ± 0.0100▲▽ | **0.3400 ± 0.0300**△ |" in md
  assert "p < 0.05" in md and "best validation checkpoint" in md

  gain = T.build(records(), LAYOUT, "ndcg@10", "gain")
  assert gain.rows == ["zero_shot", "adapter"]
  assert gain.cells[("adapter", (1.0,))].mean == pytest.approx(0.02)
  assert gain.cells[("adapter", (1.0,))].std == pytest.approx(0.01)
  assert "| adapter | +0.0400 ± 0.0100▲▽ | **+0.0200 ± 0.0100**△ |" in T.to_markdown(gain)


def test_single_seed_has_no_std_and_no_marker():
  one = [r for r in records() if r["overrides"]["seed"] == 0]
  table = T.build(one, LAYOUT, "ndcg@10")
  assert "| adapter | 0.1500 | **0.3100** |" in T.to_markdown(table)


def test_markdown_latex_csv_agree():
  table = T.build(records(), LAYOUT, "ndcg@10")
  md_rows = {line.split(" | ")[0].lstrip("| "): line for line in T.to_markdown(table).splitlines()
             if line.startswith("| ") and "---" not in line}
  tex_rows = {line.split(" & ")[0].replace("\\_", "_"): line for line in T.to_latex(table).splitlines()
              if " & " in line}
  rows = list(csv.DictReader(io.StringIO(T.to_csv(table))))
  assert len(rows) == 6
  tex_marks = {v: k for k, v in T.LATEX_MARKERS.items()}
  for r in rows:
    column = ["user_fraction=0.1", "user_fraction=1"].index(r["column"])
    text = f"{float(r['mean']):.4f} ± {float(r['std']):.4f}"
    md_cell = md_rows[r["row"]].strip("| ").split(" | ")[column + 1]
    assert md_cell == (f"**{text}**" if r["best"] == "1" else text) + r["marks"]
    tex_cell = tex_rows[r["row"]].rstrip(" \\").split(" & ")[column + 1]
    assert text.replace(" ± ", r" $\pm$ ") in tex_cell
    assert tex_cell.startswith(r"\textbf{") == (r["best"] == "1")
    tex_names = tex_cell.split("$^{")[1].rstrip("}$").split("\\")[1:] if "$^{" in tex_cell else []
    shown = "".join(tex_marks["\\" + name] for name in tex_names)
    assert shown == r["marks"]
    values = [float(x.split(":")[1]) for x in r["values"].split(";")]
    assert T.mean_std(values)[0] == pytest.approx(float(r["mean"]), abs=1e-6)
  assert T.to_latex(table).startswith("\\begin{tabular}{lrr}\n\\toprule\nstrategy & user\\_fraction=0.1")


def test_unnamed_swept_field_fails_naming_it():
  rs = records()
  extra = dict(rs[0], overrides={**rs[0]["overrides"], "transfer.lr_mult": 0.5}, key="other")
  with pytest.raises(ValueError, match=r"varies \['transfer.lr_mult'\].*'columns'"):
    T.build(rs + [extra], LAYOUT, "ndcg@10")
  with pytest.raises(ValueError, match=r"metric 'ndcg@7' is not in the results; valid: \['hr@10', 'ndcg@10'\]"):
    T.build(rs, LAYOUT, "ndcg@7")


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
  assert "| adapter | 0.1600 ± 0.0100▲▽ | **0.3400 ± 0.0300**△ |" in out.stdout
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


@pytest.mark.parametrize("path, arg", [
    ("experiments/fraction_study/config.py", None), ("experiments/shift_study/config.py", None),
    ("experiments/real_data/ml1m_cross_region.py", None), ("experiments/real_data/ml1m_cross_genre.py", None),
    ("experiments/real_data/cross_app.py", "amazon2018")])
def test_study_configs_load_and_every_cell_applies(path, arg):
  from xrec.train import sweep
  module = sweep.load_config_module(os.path.join(ROOT, path))
  config = module.get_config(arg)
  cells = sweep.cells_of(module)
  layout = sweep.layout_of(module)
  for cell in cells:
    c = sweep.apply_overrides(config, cell.overrides)
    kinds = [k for k, _, _ in sweep.plan_stages(c, "/tmp/stages")]
    assert kinds == (["transfer"] if c.transfer.strategy == "scratch" else ["pretrain", "transfer"])
  assert layout["columns"][0] in cells[0].overrides
  assert f"--config {path}" in module.__doc__ or f"--config {path}:" in module.__doc__
