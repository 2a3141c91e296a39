"""Did a change move a table? Two runs of the same study, cell by cell.

  python -m xrec.report.compare BEFORE_DIR AFTER_DIR [--metric ndcg@10]
  python -m xrec.report.compare BEFORE_DIR AFTER_DIR --cells   # cell by cell (a rerun of some cells)
  python -m xrec.report.compare FIRST_DIR SECOND_DIR --findings [--columns 0.01=0.05,1=1]

For every (row, column) cell both studies have, the means, their difference and whether it is
within noise: |after - before| <= sqrt(ci_before^2 + ci_after^2), the half-width of an approximate
95% interval of the difference of two independent means (each ci the table's 95% CI half-width).
With --cells, every study cell (one seed, one fraction, ...) that finished in both: its test
metrics' largest absolute difference and whether its best step and chosen values are the same;
for a rerun of part of a study (e.g. one seed's cells) after a change that should move nothing.
With --findings, two studies of one design on different data (the synthetic fraction study and its
real-data counterpart): for every strategy both ran and every matched column, each side's gain over
scratch and where its tests put it (significantly above scratch, below it, or neither; the same
against zero_shot); a finding holds when both studies put the strategy on the same sides of every
baseline both tested, is reversed when one finds it above and the other below. Columns match by
their values, or by --columns FIRST=SECOND,... for one column field (e.g. 0.01=0.05); strategies and
columns of one study only are listed, not compared. Studies that sweep different column fields
(user overlap in one, user fraction in the other) are compared only on the pairs --columns names
(the field names stay in the table's column labels). The tables' magnitudes are not compared: two
datasets need not share a scale (the largest mean gain per column is named, as means).
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


def parse_columns(text: str) -> dict:
  """'0.01=0.05,1=1' -> {0.01: 0.05, 1.0: 1.0}: the first study's column value -> the second's
  (layouts with one column field each, the same field or not; numbers compare as numbers, so 1.0 and
  1 are one value)."""
  out = {}
  for pair in filter(None, (p.strip() for p in text.split(","))):
    if pair.count("=") != 1:
      raise ValueError(f"--columns takes FIRST=SECOND pairs separated by commas, got {pair!r}")
    first, second = (_number(x.strip()) for x in pair.split("="))
    out[first] = second
  return out


def _number(value):
  try:
    return float(value)
  except (TypeError, ValueError):
    return value


def _side(cell: tables.TableCell, baseline: str) -> str:
  """Where the table's test put a strategy against a baseline: above, below, level (tested, not
  significantly apart), untested (the test could not run: one seed without per-user ranks, or two
  populations), or '-' (no such comparison: the baseline itself, or it did not run or is n/a)."""
  if baseline not in cell.p:
    return "-"
  if cell.p[baseline] != cell.p[baseline]:
    return "untested"
  better, worse = tables.MARKERS[baseline]
  return "above" if better in cell.marks else "below" if worse in cell.marks else "level"


def _verdict(sides: list) -> str:
  """yes / reversed / one study only over the baselines both studies tested; not comparable when
  there is none (or a test could not run on either side)."""
  tested = [(s, t) for s, t in sides if "-" not in (s, t)]
  if not tested or any("untested" in pair for pair in tested):
    return "not comparable"
  if all(s == t for s, t in tested):
    return "yes"
  return "reversed" if any({s, t} == {"above", "below"} for s, t in tested) else "one study only"


def _largest(table: tables.Table, column, rows: list):
  """The row of `rows` with the largest mean gain in `column` (scratch counts as 0), or None when
  two tie or no cell applies: a comparison of means, not a test."""
  means = {"scratch": 0.0} if "scratch" in rows else {}
  for row in rows:
    cell = table.cells.get((row, column))
    if cell is not None and not cell.not_applicable and cell.mean == cell.mean:
      means[row] = cell.mean
  if len(means) < 2:
    return None
  top = max(means.values())
  winners = [r for r, m in means.items() if m == top]
  return winners[0] if len(winners) == 1 else None


def findings(first: str, second: str, metric: str = "ndcg@10", columns: dict | None = None) -> dict:
  """For each strategy both studies ran and each matched column of their gain-over-scratch tables:
  both gains and where each study's tests put the strategy against scratch and zero_shot, with a
  verdict (_verdict); the strategies and columns of one study only are listed, not compared."""
  a, b = _table(first, metric, "gain"), _table(second, metric, "gain")
  if a.column_fields != b.column_fields and not columns:
    raise ValueError(f"the two studies sweep different columns: {a.column_fields} against {b.column_fields}; "
                     "pair the cells to compare with --columns FIRST=SECOND (e.g. the synthetic overlap study's "
                     "user_overlap 1 against a real study's user_fraction 0.05)")
  if columns:
    if len(a.column_fields) != 1 or len(b.column_fields) != 1:
      raise ValueError(f"--columns pairs the values of one column field per study; these studies have "
                       f"{a.column_fields} and {b.column_fields}")
    a_values, b_values = {_number(c[0]): c for c in a.columns}, {_number(c[0]): c for c in b.columns}
    unknown, missing = sorted(set(columns) - set(a_values)), sorted(set(columns.values()) - set(b_values))
    if unknown or missing:
      raise ValueError(f"--columns names values the studies lack: first {unknown}, second {missing}; valid: first "
                       f"{sorted(a_values)}, second {sorted(b_values)}")
    pairs = [(a_values[x], b_values[y]) for x, y in columns.items()]
  else:
    b_keys = {tuple(map(_number, c)): c for c in b.columns}
    pairs = [(c, b_keys[tuple(map(_number, c))]) for c in a.columns if tuple(map(_number, c)) in b_keys]
  if not pairs:
    raise ValueError(f"the two studies share no column: first {[a.column_text(c) for c in a.columns]}, second "
                     f"{[b.column_text(c) for c in b.columns]}; pair them with --columns FIRST=SECOND")
  shared = [r for r in a.rows if r in b.rows]
  rows, best = [], []
  for ca, cb in pairs:
    for row in shared:
      x, y = a.cells.get((row, ca)), b.cells.get((row, cb))
      if x is None or y is None or x.not_applicable or y.not_applicable:
        continue
      sides = [(_side(x, base), _side(y, base)) for base in tables.BASELINES]
      verdict = _verdict(sides)
      rows.append({"row": row, "columns": [a.column_text(ca), b.column_text(cb)], "first": x, "second": y,
                   "vs_scratch": sides[0], "vs_zero_shot": sides[1], "verdict": verdict, "holds": verdict == "yes"})
    tops = [_largest(a, ca, ["scratch"] + shared), _largest(b, cb, ["scratch"] + shared)]
    best.append({"columns": [a.column_text(ca), b.column_text(cb)], "first": tops[0], "second": tops[1],
                 "same": tops[0] is not None and tops[0] == tops[1]})
  paired_a, paired_b = {ca for ca, _ in pairs}, {cb for _, cb in pairs}
  only = {"rows": [[r for r in a.rows if r not in b.rows], [r for r in b.rows if r not in a.rows]],
          "columns": [[a.column_text(c) for c in a.columns if c not in paired_a],
                      [b.column_text(c) for c in b.columns if c not in paired_b]]}
  comparable = [r for r in rows if r["verdict"] != "not comparable"]
  return {"metric": metric, "studies": [first, second], "rows": rows, "best": best, "only": only,
          "holds": sum(r["holds"] for r in rows), "findings": len(comparable),
          "reversed": sum(r["verdict"] == "reversed" for r in rows),
          "not_comparable": len(rows) - len(comparable)}


VERDICT_TEXT = {"yes": "yes", "not comparable": "not comparable"}


def _pair_text(columns: list[str]) -> str:
  """A matched column pair's label: the one text when both read alike, else 'first / second'."""
  return columns[0] if columns[0] == columns[1] else " / ".join(columns)


def findings_markdown(result: dict) -> str:
  def gain(cell):
    return f"{tables.cell_text(cell, 'gain')}{tables.marks_text(cell)} (n={cell.n})"

  def sides(pair):
    return pair[0] if pair[0] == pair[1] else f"{pair[0]} / {pair[1]}"
  lines = [f"| strategy | column | first: gain over scratch | second: gain over scratch | vs scratch | vs zero_shot "
           "| holds |", "|---|---|---:|---:|---|---|---|"]
  for r in result["rows"]:
    column = _pair_text(r["columns"])
    lines.append(f"| {r['row']} | {column} | {gain(r['first'])} | {gain(r['second'])} | {sides(r['vs_scratch'])} | "
                 f"{sides(r['vs_zero_shot'])} | {VERDICT_TEXT.get(r['verdict'], '**no**: ' + r['verdict'])} |")
  lines += ["", "Largest mean gain per column, scratch counted as 0 (first / second; a comparison of means, not "
            "a test; none where two tie): " + "; ".join(
                f"{_pair_text(b['columns'])}: {b['first']} / {b['second']}" + ("" if b["same"] else " (differ)")
                for b in result["best"])]
  only = result["only"]
  for kind, (x, y) in (("strategies", only["rows"]), ("columns", only["columns"])):
    if x or y:
      lines.append(f"Not compared, {kind} of one study only: first {x or 'none'}; second {y or 'none'}.")
  lines += ["", f"test {result['metric']}, first: {result['studies'][0]}, second: {result['studies'][1]}. "
            f"{result['holds']} of {result['findings']} findings hold: both studies put the strategy on the same "
            "side of each baseline both tested (scratch, zero_shot): significantly above, below, or neither, by "
            "each table's own tests, Holm-corrected within its own table (a study with more seeds, or with fewer "
            f"columns or rows in its family, has more power); {result['reversed']} reversed (significantly above "
            "in one study, below in the other); the rest significant in one study only. "
            f"{result['not_comparable']} not comparable (no baseline tested in both, or a test could not run). "
            "A side pair reads first / second where they differ; '-': no such comparison."]
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
  parser.add_argument("before", help="a study directory (with --findings: the first study)")
  parser.add_argument("after", help="a study directory (with --findings: the second study)")
  parser.add_argument("--metric", default="ndcg@10")
  parser.add_argument("--cells", action="store_true", help="cell by cell (compare_cells) instead of table means")
  parser.add_argument("--findings", action="store_true",
                      help="do two studies of one design (e.g. synthetic and real data) find the same?")
  parser.add_argument("--columns", default="", help="with --findings: FIRST=SECOND column values, comma-separated")
  args = parser.parse_args(argv)
  if args.columns and not args.findings:
    parser.error("--columns pairs the columns of two studies for --findings; add --findings")
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
