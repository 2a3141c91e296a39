"""Did a change move a table? Two runs of the same study, cell by cell.

  python -m xrec.report.compare BEFORE_DIR AFTER_DIR [--metric ndcg@10]
  python -m xrec.report.compare BEFORE_DIR AFTER_DIR --cells   # cell by cell (a rerun of some cells)

For every (row, column) cell both studies have, the means, their difference and whether it is
within noise: |after - before| <= sqrt(ci_before^2 + ci_after^2), the half-width of an approximate
95% interval of the difference of two independent means (each ci the table's 95% CI half-width).
With --cells, every study cell (one seed, one fraction, ...) that finished in both: its test
metrics' largest absolute difference and whether its best step and chosen values are the same;
for a rerun of part of a study (e.g. one seed's cells) after a change that should move nothing.
Prints a Markdown table and a summary line; exits 0 (a report, not a test).
"""

from __future__ import annotations

import argparse
import math
import sys

from xrec import runindex
from xrec.report import tables


def _table(workdir: str, metric: str) -> tables.Table:
  study = runindex.read_study(workdir)
  runs = runindex.latest_runs(workdir)
  done = [runs[c["key"]] for c in study["cells"] if runs.get(c["key"], {}).get("status") == "done"]
  if not done:
    raise ValueError(f"{workdir} has no finished cells")
  return tables.build(done, study["layout"], metric)


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
  args = parser.parse_args(argv)
  if args.cells:
    print(cells_markdown(compare_cells(args.before, args.after)))
    return 0
  print(to_markdown(compare(args.before, args.after, args.metric)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
