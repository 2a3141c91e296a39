"""Did a change move a table? Two runs of the same study, cell by cell.

  python -m xrec.report.compare BEFORE_DIR AFTER_DIR [--metric ndcg@10]

For every (row, column) cell both studies have, the means, their difference and whether it is
within noise: |after - before| <= sqrt(ci_before^2 + ci_after^2), the half-width of an approximate
95% interval of the difference of two independent means (each ci the table's 95% CI half-width).
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
  args = parser.parse_args(argv)
  print(to_markdown(compare(args.before, args.after, args.metric)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
