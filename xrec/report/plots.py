"""Study plots (PNG, matplotlib Agg): metric vs the column field, metric vs trainable parameters."""

from __future__ import annotations

import numbers
import os

import numpy as np

from xrec.report import tables


def _pyplot():
  """matplotlib (Agg: files only, no display on servers), imported when a plot is drawn: about 1 s of
  every launch that writes a report with nothing to plot."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def _numeric(values) -> bool:
  return all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in values)


def metric_vs_column(table: tables.Table, path: str) -> str | None:
  """One line per row (strategy) with a band of the 95% CI; None when the columns are not one numeric
  field (nothing to put on an x axis). n/a cells are left out."""
  if len(table.column_fields) != 1 or not _numeric([c[0] for c in table.columns]):
    return None
  field = table.column_fields[0]
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  xs_all = sorted(c[0] for c in table.columns)
  for row in table.rows:
    points = sorted((c[0], table.cells[(row, c)]) for c in table.columns
                    if (row, c) in table.cells and not table.cells[(row, c)].not_applicable)
    if not points:
      continue
    x = np.array([p[0] for p in points], dtype=float)
    mean = np.array([p[1].mean for p in points])
    ci = np.nan_to_num(np.array([p[1].ci for p in points]))
    ax.plot(x, mean, marker="o", label=str(row))
    ax.fill_between(x, mean - ci, mean + ci, alpha=0.2)
  if xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 10:
    ax.set_xscale("log")
  ax.set_xticks(xs_all, [f"{x:g}" for x in xs_all])
  ax.set_xlabel(field)
  ax.set_ylabel(f"test {table.metric}" + (" gain over scratch" if table.kind == "gain" else ""))
  ax.set_title(f"{table.metric} vs {field.rsplit('.', 1)[-1]} (mean, 95% CI)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def metric_vs_trainable(table: tables.Table, trainable: dict, path: str) -> str | None:
  """Each row at its trainable parameter count (symlog: zero_shot trains none), one series per
  column with 95% CI error bars; None when no record has a parameter count. n/a cells are left out."""
  return _metric_vs_slot_value(table, trainable, path, "trainable parameters", "trainable parameters",
                               lambda ax: ax.set_xscale("symlog", linthresh=1.0))


def metric_vs_speed(table: tables.Table, speed: dict, path: str) -> str | None:
  """Quality against serving speed: each row at the mean evaluation users/s of its served model
  (log x), one series per column, 95% CI error bars; None when no record has a speed."""
  return _metric_vs_slot_value(table, speed, path, "evaluation users / s of the served model (mean over seeds)",
                               "serving speed", lambda ax: ax.set_xscale("log"))


def _metric_vs_slot_value(table: tables.Table, values: dict, path: str, xlabel: str, title: str, xscale):
  """Each row at its value in `values` ((row, column) -> x), one series per column with 95% CI
  error bars, labelled by row; None when `values` is empty. n/a cells are left out."""
  if not values:
    return None
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6.4, 4.4))
  for column in table.columns:
    rows = [r for r in table.rows if (r, column) in table.cells and (r, column) in values
            and not table.cells[(r, column)].not_applicable]
    if not rows:
      continue
    x = np.array([values[(r, column)] for r in rows], dtype=float)
    mean = np.array([table.cells[(r, column)].mean for r in rows])
    ci = np.nan_to_num(np.array([table.cells[(r, column)].ci for r in rows]))
    ax.errorbar(x, mean, yerr=ci, fmt="o", capsize=3, label=table.column_text(column))
    for xi, yi, r in zip(x, mean, rows):
      ax.annotate(str(r), (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
  xscale(ax)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(f"test {table.metric}")
  ax.set_title(f"{table.metric} vs {title}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def speed_by_slot(records: list[dict], layout: dict) -> dict:
  """(row, column) -> mean evaluation users/s of the served model over the slot's seeds."""
  out = {}
  for r in records:
    speed = (r.get("serving") or {}).get("eval_users_per_second")
    if speed:
      slot = (tables.row_label(r, layout), tuple(tables.label(r, f) for f in layout["columns"]))
      out.setdefault(slot, []).append(float(speed))
  return {k: float(np.mean(v)) for k, v in out.items()}


def trainable_by_slot(records: list[dict], layout: dict) -> dict:
  """(row, column) -> trainable parameters (the same for every seed of a slot)."""
  out = {}
  for r in records:
    if r.get("trainable_params") is None:
      continue
    slot = (tables.row_label(r, layout), tuple(tables.label(r, f) for f in layout["columns"]))
    out[slot] = r["trainable_params"]
  return out


def slug(text: str) -> str:
  return "".join(ch if ch.isalnum() else "_" for ch in text.replace("@", "_at_")).strip("_")


def write_plots(table: tables.Table, records: list[dict], layout: dict, out_dir: str) -> list[str]:
  """The table's plots; none for a table of one cell (a single run: one point plots nothing)."""
  if len(table.cells) < 2:
    return []
  name = f"{table.kind}_{slug(table.metric)}" if table.kind == "gain" else slug(table.metric)
  paths = []
  if table.column_fields:
    p = metric_vs_column(table, os.path.join(out_dir, f"{name}_vs_{slug(table.column_fields[0])}.png"))
    paths += [p] if p else []
  if table.kind == "metric":
    p = metric_vs_trainable(table, trainable_by_slot(records, layout),
                            os.path.join(out_dir, f"{name}_vs_trainable_params.png"))
    paths += [p] if p else []
    if layout.get("speed_plot"):  # studies of serving cost (distillation, pruning)
      p = metric_vs_speed(table, speed_by_slot(records, layout), os.path.join(out_dir, f"{name}_vs_users_per_s.png"))
      paths += [p] if p else []
  return paths
