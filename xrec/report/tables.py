"""Study records -> tables: mean ± std over seeds, best per column, paired t-tests against baselines.

A table has one row per value of the layout's row field (strategies), one column per value of its
column fields (e.g. target fractions) and, in each cell, the test metric of the cells of every seed
(results.json "test": the metrics at the best validation checkpoint). Markers compare a row with
the `scratch` and `zero_shot` rows of the same column by a two-sided paired t-test over the seeds
both have. A "gain" table shows the per-seed differences to `scratch` instead of the values.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from scipy import stats as scipy_stats

ALPHA = 0.05  # two-sided p threshold of the markers
BASELINES = ("scratch", "zero_shot")
# (better, worse) markers per baseline
MARKERS = {"scratch": ("▲", "▼"), "zero_shot": ("△", "▽")}
LATEX_MARKERS = {"▲": r"\blacktriangle", "▼": r"\blacktriangledown", "△": r"\vartriangle",
                 "▽": r"\triangledown"}
MISSING = "–"


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
  x = np.asarray(values, dtype=np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def paired_t_test(a, b) -> tuple[float, float]:
  """Two-sided paired t-test of a vs b (same order = same seed): (t, p); nan for fewer than two pairs.
  Identical differences give t = ±inf, p = 0 (or t = 0, p = 1 when they are all zero)."""
  d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
  n = len(d)
  if n < 2:
    return float("nan"), float("nan")
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd <= 1e-12:  # equal differences up to float rounding (metrics live in [0, 1])
    return (0.0, 1.0) if abs(mean) <= 1e-12 else (math.copysign(math.inf, mean), 0.0)
  t = mean / (sd / math.sqrt(n))
  return t, float(2.0 * scipy_stats.t.sf(abs(t), df=n - 1))


@dataclasses.dataclass
class TableCell:
  values: dict  # seed -> shown value (the metric, or its difference to scratch in a gain table)
  mean: float
  std: float
  p: dict  # baseline -> two-sided p of the raw metric vs that baseline (nan: untestable)
  t: dict  # baseline -> t statistic
  marks: str = ""
  best: bool = False

  @property
  def n(self) -> int:
    return len(self.values)


@dataclasses.dataclass
class Table:
  metric: str
  kind: str  # "metric" | "gain" (difference to scratch, paired by seed)
  row_field: str
  column_fields: list
  rows: list  # row labels in sweep order
  columns: list  # column labels (tuples of values) in sweep order
  cells: dict  # (row, column) -> TableCell
  alpha: float = ALPHA

  def column_text(self, column) -> str:
    if not self.column_fields:
      return f"test {self.metric}"
    return ", ".join(f"{f.rsplit('.', 1)[-1]}={_value_text(v)}" for f, v in zip(self.column_fields, column))


def _value_text(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def _label(overrides: dict, field: str):
  value = overrides.get(field, "default")
  return tuple(value) if isinstance(value, list) else value


def collect(records: list[dict], layout: dict, metric: str) -> dict:
  """(row, column) -> {seed: metric} from done records; two cells in one slot (a swept field the
  layout does not name) fail with the fields that differ."""
  grid, owner = {}, {}
  for r in records:
    if metric not in r["test"]:
      raise ValueError(f"metric {metric!r} is not in the results; valid: {sorted(r['test'])}")
    o = r["overrides"]
    row = _label(o, layout["rows"])
    column = tuple(_label(o, f) for f in layout["columns"])
    seed = _label(o, layout["seed"])
    slot = grid.setdefault((row, column), {})
    if seed in slot:
      other = owner[(row, column, seed)]
      differ = sorted(k for k in set(o) | set(other) if o.get(k) != other.get(k))
      raise ValueError(f"cells {r['key']!r} and {cell_key_text(other)!r} fall in the same table "
                       f"slot; the sweep varies {differ}, which metrics() does not name: add them to "
                       f"'columns' (now {layout['columns']})")
    slot[seed] = float(r["test"][metric])
    owner[(row, column, seed)] = o
  return grid


def cell_key_text(overrides: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in overrides.items())


def _ordered(items):
  seen = []
  for x in items:
    if x not in seen:
      seen.append(x)
  return seen


def build(records: list[dict], layout: dict, metric: str, kind: str = "metric", alpha: float = ALPHA) -> Table:
  """The table of `metric` over done records (each: overrides, test metrics)."""
  if kind not in ("metric", "gain"):
    raise ValueError(f"Unknown table kind {kind!r}; valid: ['metric', 'gain']")
  grid = collect(records, layout, metric)
  rows = _ordered(row for row, _ in grid)
  columns = _ordered(column for _, column in grid)
  if kind == "gain":
    if "scratch" not in rows:
      raise ValueError(f"a gain table needs a 'scratch' row; rows: {rows}")
    rows = [r for r in rows if r != "scratch"]
  cells = {}
  for column in columns:
    for row in rows:
      raw = grid.get((row, column))
      if not raw:
        continue
      shown = raw
      if kind == "gain":
        base = grid.get(("scratch", column), {})
        shown = {s: v - base[s] for s, v in raw.items() if s in base}
        if not shown:
          continue
      mean, std = mean_std(list(shown.values()))
      cell = TableCell(values=shown, mean=mean, std=std, p={}, t={})
      for baseline in BASELINES:
        base = grid.get((baseline, column))
        if baseline == row or not base:
          continue
        seeds = [s for s in raw if s in base]
        t, p = paired_t_test([raw[s] for s in seeds], [base[s] for s in seeds])
        cell.t[baseline], cell.p[baseline] = t, p
        if p == p and p < alpha:  # p == p: not nan
          better, worse = MARKERS[baseline]
          cell.marks += better if t > 0 else worse
      cells[(row, column)] = cell
    means = [cells[(r, column)].mean for r in rows if (r, column) in cells]
    if means:
      for r in rows:
        if (r, column) in cells and cells[(r, column)].mean == max(means):
          cells[(r, column)].best = True
  return Table(metric, kind, layout["rows"], list(layout["columns"]), rows, columns, cells, alpha)


def cell_text(cell: TableCell, kind: str = "metric", plus_minus: str = "±") -> str:
  """`mean ± std` at 4 decimals (gains signed); the mean alone for a single seed."""
  mean = f"{cell.mean:+.4f}" if kind == "gain" else f"{cell.mean:.4f}"
  return f"{mean} {plus_minus} {cell.std:.4f}" if cell.std == cell.std else mean


def legend(table: Table) -> str:
  what = (f"test {table.metric} at the best validation checkpoint" if table.kind == "metric" else
          f"gain in test {table.metric} over scratch (per seed, at the best validation checkpoints)")
  return (f"{what}; mean ± sample std over seeds; bold: best mean per column; "
          f"▲/▼: significantly better/worse than scratch, △/▽: than zero_shot "
          f"(two-sided paired t-test over seeds, p < {table.alpha:g}).")


def to_markdown(table: Table) -> str:
  header = [table.row_field.rsplit(".", 1)[-1]] + [table.column_text(c) for c in table.columns]
  lines = ["| " + " | ".join(header) + " |", "|---" + "|---:" * len(table.columns) + "|"]
  for row in table.rows:
    out = [str(row)]
    for column in table.columns:
      cell = table.cells.get((row, column))
      if cell is None:
        out.append(MISSING)
        continue
      text = cell_text(cell, table.kind)
      out.append((f"**{text}**" if cell.best else text) + cell.marks)
    lines.append("| " + " | ".join(out) + " |")
  n = sorted({c.n for c in table.cells.values()})
  lines += ["", legend(table) + f" Seeds per cell: {', '.join(map(str, n))}."]
  return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
  return "".join("\\" + ch if ch in "_%&#$" else ch for ch in text)


def to_latex(table: Table) -> str:
  """booktabs tabular (needs \\usepackage{booktabs,amssymb})."""
  header = [_latex_escape(table.row_field.rsplit(".", 1)[-1])] + [
      _latex_escape(table.column_text(c)) for c in table.columns]
  lines = [r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
           " & ".join(header) + r" \\", r"\midrule"]
  for row in table.rows:
    out = [_latex_escape(str(row))]
    for column in table.columns:
      cell = table.cells.get((row, column))
      if cell is None:
        out.append("--")
        continue
      text = cell_text(cell, table.kind, r"$\pm$")
      text = rf"\textbf{{{text}}}" if cell.best else text
      if cell.marks:
        text += "$^{" + "".join(LATEX_MARKERS[m] for m in cell.marks) + "}$"
      out.append(text)
    lines.append(" & ".join(out) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}",
            "% " + legend(table).replace("▲", "$\\blacktriangle$").replace("▼", "$\\blacktriangledown$")
            .replace("△", "$\\vartriangle$").replace("▽", "$\\triangledown$")]
  return "\n".join(lines) + "\n"


CSV_COLUMNS = ("metric", "kind", "row", "column", "n", "mean", "std", "p_vs_scratch", "p_vs_zero_shot",
               "marks", "best", "values")


def to_csv(table: Table) -> str:
  """One line per cell; `values` lists seed:value pairs; p columns empty where untested."""
  import csv
  import io
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(CSV_COLUMNS)
  for row in table.rows:
    for column in table.columns:
      cell = table.cells.get((row, column))
      if cell is None:
        continue
      p = [("" if b not in cell.p or cell.p[b] != cell.p[b] else f"{cell.p[b]:.6g}") for b in BASELINES]
      w.writerow([table.metric, table.kind, row, table.column_text(column), cell.n, f"{cell.mean:.6f}",
                  "" if cell.std != cell.std else f"{cell.std:.6f}", *p, cell.marks, int(cell.best),
                  ";".join(f"{s}:{v:.6f}" for s, v in cell.values.items())])
  return buf.getvalue()
