"""Did a change move a table? Two runs of the same study, cell by cell.

  python -m xrec.report.compare BEFORE_DIR AFTER_DIR [--metric ndcg@10]
  python -m xrec.report.compare BEFORE_DIR AFTER_DIR --cells   # cell by cell (a rerun of some cells)

For every (row, column) cell both studies have, the means, their difference and whether it is
within noise: |after - before| <= sqrt(ci_before^2 + ci_after^2), the half-width of an approximate
95% interval of the difference of two independent means (each ci the table's 95% CI half-width).
With --cells, every study cell (one seed, one fraction, ...) that finished in both: its test
metrics' largest absolute difference and whether its best step and chosen values are the same;
for a rerun of part of a study (e.g. one seed's cells) after a change that should move nothing.
With --findings, two studies of one design on different data (the synthetic fraction study and its
real-data counterpart): for every strategy and matched column, each side's gain over scratch and
where the tests put it (significantly above scratch, below it, or neither; the same against
zero_shot); a finding holds when both studies put the strategy on the same sides, and the best
strategy of a column holds when both name the same one. Columns match by their values, or by
--columns FIRST=SECOND,... (e.g. 0.05=0.05,0.2=0.2,1=1). The tables' magnitudes are not compared:
two datasets need not share a scale.
Prints a Markdown table and a summary line; exits 0 (a report, not a test).
"""

from __future__ import annotations

import argparse
import math
import sys

from xrec import runindex
from xrec.report import tables


def _table(workdir: str, metric: str, kind: str = "metric") -> tables.Table:
  study = runindex.read_study(workdir)
  runs = runindex.latest_runs(workdir)
  done = [runs[c["key"]] for c in study["cells"] if runs.get(c["key"], {}).get("status") == "done"]
  if not done:
    raise ValueError(f"{workdir} has no finished cells")
  return tables.build(done, study["layout"], metric, kind)


def compare(before: str, after: str, metric: str = "ndcg@10") -> dict:
  a, b = _table(before, metric), _table(after, metric)
  rows = []
  for key, cell_b in b.cells.items():
    cell_a = a.cells.get(key)
    if cell_a is None or cell_a.not_applicable or cell_b.not_applicable:
      continue
    noise = math.sqrt(sum(c.ci ** 2 for c in (cell_a, cell_b) if c.ci == c.ci))
    diff = cell_b.mean - cell_a.mean
    rows.append({"row": key[0], "column": b.column_text(key[1]), "before": cell_a.mean, "after": cell_b.mean,
                 "diff": diff, "noise": noise, "within": abs(diff) <= noise})
  return {"metric": metric, "rows": rows, "within": sum(r["within"] for r in rows), "cells": len(rows)}


def compare_cells(before: str, after: str, metrics=("ndcg@10", "hr@10", "ndcg@20", "hr@20")) -> dict:
  """Cell by cell: every key finished in both run indexes, its test metrics' largest absolute
  difference (over `metrics` the records have), best step and tuned values on each side."""
  a, b = ({k: r for k, r in runindex.latest_runs(w).items() if r.get("status") == "done"} for w in (before, after))
  rows = []
  for key in [k for k in b if k in a]:
    ra, rb = a[key], b[key]
    shared = [m for m in metrics if m in ra["test"] and m in rb["test"]]
    chosen = [(r.get("tuning") or {}).get("chosen") for r in (ra, rb)]
    rows.append({"key": key, "before": ra["test"].get(metrics[0]), "after": rb["test"].get(metrics[0]),
                 "max_abs_diff": max((abs(ra["test"][m] - rb["test"][m]) for m in shared), default=0.0),
                 "best_step": [ra.get("best_step"), rb.get("best_step")], "chosen": chosen,
                 "same_choice": ra.get("best_step") == rb.get("best_step") and chosen[0] == chosen[1]})
  return {"metrics": list(metrics), "rows": rows, "cells": len(rows),
          "identical": sum(r["max_abs_diff"] == 0.0 and r["same_choice"] for r in rows),
          "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=None),
          "only_before": len(set(a) - set(b))}


def cells_markdown(result: dict) -> str:
  lines = [f"| cell | test {result['metrics'][0]} before | after | largest abs diff ({len(result['metrics'])} test "
           "metrics) | best step before / after | chosen before / after |", "|---|---:|---:|---:|---|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['key']} | {r['before']:.6f} | {r['after']:.6f} | {r['max_abs_diff']:.2e} | "
                 f"{r['best_step'][0]} / {r['best_step'][1]} | {r['chosen'][0]} / {r['chosen'][1]} |")
  lines += ["", f"{result['identical']} of {result['cells']} cells identical (test metrics to the last bit, same "
            f"best step and chosen values); largest difference {result['max_abs_diff']}; "
            f"{result['only_before']} cells finished only before."]
  return "\n".join(lines) + "\n"


def _column_key(column) -> str:
  return ",".join(tables._value_text(v) for v in column)


def parse_columns(text: str) -> dict:
  """'0.05=0.05,1=1' -> {'0.05': '0.05', '1': '1'} (first study's column values -> the second's)."""
  out = {}
  for pair in filter(None, (p.strip() for p in text.split(","))):
    if pair.count("=") != 1:
      raise ValueError(f"--columns takes FIRST=SECOND pairs separated by commas, got {pair!r}")
    first, second = (x.strip() for x in pair.split("="))
    out[first] = second
  return out


def _side(cell: tables.TableCell, baseline: str) -> str:
  """Where the table's test put a strategy against a baseline: above, below, level (not
  significantly apart), or '-' (not tested: the baseline itself, or it did not run)."""
  if baseline not in cell.p:
    return "-"
  better, worse = tables.MARKERS[baseline]
  return "above" if better in cell.marks else "below" if worse in cell.marks else "level"


def findings(first: str, second: str, metric: str = "ndcg@10", columns: dict | None = None) -> dict:
  """For each strategy and matched column of two studies' gain-over-scratch tables: both gains and
  where each study's tests put the strategy against scratch and zero_shot; `holds` when they agree."""
  a, b = _table(first, metric, "gain"), _table(second, metric, "gain")
  by_key = {_column_key(c): c for c in b.columns}
  if columns:
    unknown = sorted(set(columns) - {_column_key(c) for c in a.columns})
    missing = sorted(set(columns.values()) - set(by_key))
    if unknown or missing:
      raise ValueError(f"--columns names columns the studies lack: first {unknown}, second {missing}; valid: first "
                       f"{[_column_key(c) for c in a.columns]}, second {list(by_key)}")
    pairs = [(ca, by_key[columns[_column_key(ca)]]) for ca in a.columns if _column_key(ca) in columns]
  else:
    pairs = [(ca, by_key[_column_key(ca)]) for ca in a.columns if _column_key(ca) in by_key]
  if not pairs:
    raise ValueError(f"the two studies share no column: first {[_column_key(c) for c in a.columns]}, second "
                     f"{list(by_key)}; match them with --columns FIRST=SECOND")
  rows, best = [], []
  for ca, cb in pairs:
    for row in [r for r in a.rows if r in b.rows]:
      x, y = a.cells.get((row, ca)), b.cells.get((row, cb))
      if x is None or y is None or x.not_applicable or y.not_applicable:
        continue
      sides = [(_side(x, base), _side(y, base)) for base in tables.BASELINES]
      verdict = ("yes" if all(s == t for s, t in sides) else
                 "reversed" if any({s, t} == {"above", "below"} for s, t in sides) else "one study only")
      rows.append({"row": row, "columns": [a.column_text(ca), b.column_text(cb)], "first": x, "second": y,
                   "vs_scratch": sides[0], "vs_zero_shot": sides[1], "holds": verdict == "yes",
                   "verdict": verdict})
    tops = [next((r for r in t.rows if t.cells.get((r, c)) is not None and t.cells[(r, c)].best), None)
            for t, c in ((a, ca), (b, cb))]
    best.append({"columns": [a.column_text(ca), b.column_text(cb)], "first": tops[0], "second": tops[1],
                 "holds": tops[0] == tops[1]})
  return {"metric": metric, "studies": [first, second], "rows": rows, "best": best,
          "holds": sum(r["holds"] for r in rows), "findings": len(rows)}


def findings_markdown(result: dict) -> str:
  def gain(cell):
    ci = f" ± {cell.ci:.4f}" if cell.ci == cell.ci else ""
    return f"{cell.mean:+.4f}{ci}{cell.marks} (n={cell.n})"

  def sides(pair):
    return pair[0] if pair[0] == pair[1] else f"{pair[0]} / {pair[1]}"
  lines = [f"| strategy | column | first: gain over scratch | second: gain over scratch | vs scratch | vs zero_shot "
           "| holds |", "|---|---|---:|---:|---|---|---|"]
  for r in result["rows"]:
    column = r["columns"][0] if r["columns"][0] == r["columns"][1] else " / ".join(r["columns"])
    lines.append(f"| {r['row']} | {column} | {gain(r['first'])} | {gain(r['second'])} | {sides(r['vs_scratch'])} | "
                 f"{sides(r['vs_zero_shot'])} | {'yes' if r['holds'] else '**no**: ' + r['verdict']} |")
  lines += ["", "Best mean per column (first / second): " + "; ".join(
      f"{b['columns'][0]}: {b['first']} / {b['second']}{'' if b['holds'] else ' (**differs**)'}"
      for b in result["best"]),
      "", f"test {result['metric']}, first: {result['studies'][0]}, second: {result['studies'][1]}. "
      f"{result['holds']} of {result['findings']} findings hold (both studies put the strategy on the same side "
      "of scratch and of zero_shot: significantly above, below, or neither, each table's own tests); "
      f"{sum(r['verdict'] == 'reversed' for r in result['rows'])} reversed (significantly above in one, below in "
      "the other); the rest significant in one study only, which fewer seeds or a smaller effect can "
      "explain. A side pair reads first / second where they differ."]
  return "\n".join(lines) + "\n"


def to_markdown(result: dict) -> str:
  lines = [f"| strategy | column | before | after | after - before | noise (95%) | within noise |",
           "|---|---|---:|---:|---:|---:|---|"]
  for r in result["rows"]:
    lines.append(f"| {r['row']} | {r['column']} | {r['before']:.4f} | {r['after']:.4f} | {r['diff']:+.4f} | "
                 f"{r['noise']:.4f} | {'yes' if r['within'] else '**no**'} |")
  lines += ["", f"test {result['metric']}: {result['within']} of {result['cells']} cells within noise."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m xrec.report.compare", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("before")
  parser.add_argument("after")
  parser.add_argument("--metric", default="ndcg@10")
  parser.add_argument("--cells", action="store_true", help="cell by cell (compare_cells) instead of table means")
  parser.add_argument("--findings", action="store_true",
                      help="do two studies of one design (e.g. synthetic and real data) find the same?")
  parser.add_argument("--columns", default="", help="with --findings: FIRST=SECOND column values, comma-separated")
  args = parser.parse_args(argv)
  if args.findings:
    print(findings_markdown(findings(args.before, args.after, args.metric, parse_columns(args.columns))))
    return 0
  if args.cells:
    print(cells_markdown(compare_cells(args.before, args.after)))
    return 0
  print(to_markdown(compare(args.before, args.after, args.metric)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
