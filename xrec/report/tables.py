"""Study records -> tables: mean ± 95% CI over seeds, best per column, corrected paired tests.

A table has one row per value of the layout's row field (strategies), one column per value of its
column fields (e.g. target fractions) and, in each cell, the test metric of the records of every
seed (the metrics at the best validation checkpoint of the candidate chosen on validation).

Statistics (the protocol of DESIGN.md):
  * each row is compared with the `scratch` and `zero_shot` rows of the same column, paired:
    over seeds by a two-sided paired t-test (>= 2 seeds both have), or, for single-seed tables,
    over the evaluation users by a per-user paired bootstrap (both cells scored the same
    population; per-user values come from the records' test ranks);
  * a difference with zero variance is never p = 0 by division: equal values give p = 1, a
    constant non-zero difference over seeds gets the exact sign-flip permutation p (2 / 2^n);
  * the p-values of all the table's comparisons are corrected together (Holm-Bonferroni) and the
    markers use the corrected values;
  * cells show mean ± the half-width of a 95% CI (t interval over seeds; bootstrap percentile
    interval over users for one seed);
  * ▼ marks negative transfer (significantly below scratch), ▽ significantly below zero_shot;
  * † marks cells whose best validation step was the last evaluation of the budget in some seed
    (still improving when the budget ran out); ‡ cells whose best validation step was the first
    evaluation after step 0 in some seed, with later evaluations all lower (the peak may lie
    before it: the evaluation cadence is too coarse to place it);
  * zero_shot on a target whose catalogue the source barely knows is "n/a (item overlap x%)".
A "gain" table shows the per-seed (or per-user) differences to `scratch` with the same tests.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np

ALPHA = 0.05  # two-sided threshold of the markers, on Holm-corrected p-values
CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BASELINES = ("scratch", "zero_shot")
# (better, worse) markers per baseline
MARKERS = {"scratch": ("▲", "▼"), "zero_shot": ("△", "▽")}
STILL_IMPROVING = "†"
FIRST_EVAL = "‡"
LATEX_MARKERS = {"▲": r"\blacktriangle", "▼": r"\blacktriangledown", "△": r"\vartriangle",
                 "▽": r"\triangledown", STILL_IMPROVING: r"\dagger", FIRST_EVAL: r"\ddagger"}
MISSING = "–"
_TOL = 1e-12  # metrics live in [0, 1]: differences below this are float rounding


# ---------------------------------------------------------------------------------------------
# statistics


def mean_std(values) -> tuple[float, float]:
  """Mean and sample standard deviation (ddof=1; nan for fewer than two values)."""
  x = np.asarray(values, dtype=np.float64)
  return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan")


def _t_distribution():
  """scipy's Student t, imported when a statistic needs it (two or more values): scipy.stats takes
  about 1.3 s to import, which every launch paid for a one-seed report that has no interval."""
  from scipy import stats
  return stats.t


def t_interval(values, confidence: float = CONFIDENCE) -> float:
  """Half-width of the t confidence interval of the mean (nan for fewer than two values)."""
  x = np.asarray(values, dtype=np.float64)
  n = len(x)
  if n < 2:
    return float("nan")
  return float(_t_distribution().ppf(0.5 + confidence / 2, df=n - 1) * x.std(ddof=1) / math.sqrt(n))


def sign_flip_p(d) -> float:
  """Exact two-sided paired permutation p: the share of the 2^n sign flips of the differences
  whose |mean| reaches the observed one (n <= 16)."""
  d = np.asarray(d, dtype=np.float64)
  if len(d) > 16:
    raise ValueError(f"sign_flip_p enumerates 2^n flips; n = {len(d)} is too many")
  observed = abs(d.mean())
  flips = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
  return float(np.mean(np.abs(flips @ d / len(d)) >= observed - _TOL))


def paired_t_test(a, b) -> tuple[float, float]:
  """Two-sided paired t-test of a vs b (same order = same seed): (t, p); nan for fewer than two
  pairs. Differences with zero variance: all zero -> (0, 1); constant non-zero -> t = ±inf with
  the exact sign-flip permutation p (never 0)."""
  d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
  n = len(d)
  if n < 2:
    return float("nan"), float("nan")
  mean, sd = float(d.mean()), float(d.std(ddof=1))
  if sd <= _TOL:
    if abs(mean) <= _TOL:
      return 0.0, 1.0
    return math.copysign(math.inf, mean), sign_flip_p(d)
  t = mean / (sd / math.sqrt(n))
  return t, float(2.0 * _t_distribution().sf(abs(t), df=n - 1))


def _resample_means(x: np.ndarray, num_resamples: int, seed: int) -> np.ndarray:
  """Means of `num_resamples` bootstrap resamples (users drawn with replacement), in chunks."""
  rng = np.random.default_rng(seed)
  n, out, chunk = len(x), [], max(1, 2_000_000 // max(len(x), 1))
  for start in range(0, num_resamples, chunk):
    idx = rng.integers(0, n, size=(min(chunk, num_resamples - start), n))
    out.append(x[idx].mean(axis=1))
  return np.concatenate(out)


def bootstrap_interval(values, num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
  """Percentile bootstrap CI (low, high) of the mean of per-user values."""
  means = _resample_means(np.asarray(values, np.float64), num_resamples, seed)
  tail = (1 - confidence) / 2
  return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def paired_bootstrap(a, b, num_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     confidence: float = CONFIDENCE) -> dict:
  """Per-user paired bootstrap of mean(a - b) (a[i], b[i]: the same user under two cells).

  Returns mean, the percentile CI (low, high) and the two-sided p of H0 "mean difference 0":
  the resampled means are centred on the observed one (the null distribution) and
  p = (1 + #{|m* - m| >= |m|}) / (B + 1). Identical columns give p = 1.
  """
  d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
  if d.ndim != 1 or len(d) == 0:
    raise ValueError(f"paired_bootstrap needs two equal-length non-empty vectors, got {np.shape(a)} "
                     f"and {np.shape(b)}")
  observed = float(d.mean())
  means = _resample_means(d, num_resamples, seed)
  tail = (1 - confidence) / 2
  extreme = int(np.sum(np.abs(means - observed) >= abs(observed) - _TOL))
  return {"mean": observed, "low": float(np.quantile(means, tail)), "high": float(np.quantile(means, 1 - tail)),
          "p": min(1.0, (1 + extreme) / (num_resamples + 1))}


def holm(pvalues) -> list[float]:
  """Holm-Bonferroni adjusted p-values (same order); nan entries stay nan and do not count."""
  p = [float(x) for x in pvalues]
  order = sorted((i for i, x in enumerate(p) if x == x), key=lambda i: p[i])
  m = len(order)
  out = [float("nan")] * len(p)
  running = 0.0
  for rank, i in enumerate(order):
    running = max(running, min(1.0, (m - rank) * p[i]))
    out[i] = running
  return out


def per_user_metric(ranks, metric: str) -> np.ndarray:
  """Per-user values of `metric` (hr@K, recall@K, ndcg@K, mrr@K) from 0-based target ranks."""
  name, _, k = metric.partition("@")
  if not k.isdigit() or name not in ("hr", "recall", "ndcg", "mrr"):
    raise ValueError(f"per-user values need a metric like ndcg@10; got {metric!r}")
  r = np.asarray(ranks, np.float64)
  hit = (r < int(k)).astype(np.float64)
  if name in ("hr", "recall"):
    return hit
  if name == "ndcg":
    return hit / np.log2(r + 2.0)
  return hit / (r + 1.0)


# ---------------------------------------------------------------------------------------------
# tables


@dataclasses.dataclass
class TableCell:
  values: dict  # seed -> shown value (the metric, or its difference to scratch in a gain table)
  mean: float
  std: float
  ci: float  # half-width of the 95% CI of the mean (nan: unknown)
  p: dict  # baseline -> two-sided p, Holm-corrected over the table (nan: untestable)
  p_raw: dict  # baseline -> uncorrected p
  test: dict  # baseline -> "t" (paired over seeds) | "bootstrap" (paired over users)
  marks: str = ""
  best: bool = False
  still_improving: int = 0  # seeds whose best validation step was the last evaluation
  first_eval: int = 0  # seeds whose best validation step was the first after step 0 (peaked_at_first_eval)
  not_applicable: str = ""  # e.g. zero_shot on a disjoint catalogue

  @property
  def n(self) -> int:
    return len(self.values)


@dataclasses.dataclass
class Table:
  metric: str
  kind: str  # "metric" | "gain" (difference to scratch, paired by seed or user)
  row_field: str
  column_fields: list
  rows: list  # row labels in sweep order
  columns: list  # column labels (tuples of values) in sweep order
  cells: dict  # (row, column) -> TableCell
  alpha: float = ALPHA
  comparisons: int = 0  # tests in the Holm family
  caption: list = dataclasses.field(default_factory=list)  # protocol lines (population, budget, ...)

  def column_text(self, column) -> str:
    if not self.column_fields:
      return f"test {self.metric}"
    return ", ".join(f"{f.rsplit('.', 1)[-1]}={_value_text(v)}" for f, v in zip(self.column_fields, column))


def _value_text(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def label(record: dict, field: str):
  """The value of `field` in a run record: its override, else the value the runner recorded for
  the cell (`fields`), else "default"."""
  overrides = record.get("overrides", {})
  value = overrides[field] if field in overrides else (record.get("fields") or {}).get(field, "default")
  return tuple(value) if isinstance(value, list) else value


def row_label(record: dict, layout: dict):
  """The row of a run record: the value of layout["rows"]; with layout["row_detail"] (a field a
  study sweeps inside some rows, e.g. transfer.cross_user.mode), "row:value" for cells that set it
  (so two variants of one strategy are two rows, and scratch stays "scratch")."""
  row = label(record, layout["rows"])
  detail = layout.get("row_detail")
  if detail and detail in record.get("overrides", {}):
    return f"{row}:{_value_text(record['overrides'][detail])}"
  return row


def collect(records: list[dict], layout: dict, metric: str) -> dict:
  """(row, column) -> {seed: record} from done records; two records in one slot (a swept field the
  layout does not name) fail with the fields that differ."""
  grid = {}
  for r in records:
    if metric not in r["test"]:
      raise ValueError(f"metric {metric!r} is not in the results; valid: {sorted(r['test'])}")
    o = r["overrides"]
    row = row_label(r, layout)
    column = tuple(label(r, f) for f in layout["columns"])
    seed = label(r, layout["seed"])
    slot = grid.setdefault((row, column), {})
    if seed in slot:
      other = slot[seed]["overrides"]
      differ = sorted(k for k in set(o) | set(other) if o.get(k) != other.get(k))
      raise ValueError(f"cells {r['key']!r} and {cell_key_text(other)!r} fall in the same table "
                       f"slot; the sweep varies {differ}, which metrics() does not name: add them to "
                       f"'columns' (now {layout['columns']})")
    slot[seed] = r
  return grid


def cell_key_text(overrides: dict) -> str:
  return ",".join(f"{k}={v}" for k, v in overrides.items())


def ordered(items):
  seen = []
  for x in items:
    if x not in seen:
      seen.append(x)
  return seen


def _per_user(record: dict, metric: str):
  ranks = record.get("test_rank")
  return None if ranks is None else per_user_metric(ranks, metric)


def _population(record: dict):
  pop = record.get("population") or {}
  return pop.get("keys_sha256")


def _compare(raw: dict, base: dict, metric: str) -> tuple[float, str, float]:
  """(two-sided p, test name, t or nan) of the paired comparison raw vs base ({seed: record})."""
  seeds = [s for s in raw if s in base]
  if len(seeds) >= 2:
    t, p = paired_t_test([raw[s]["test"][metric] for s in seeds], [base[s]["test"][metric] for s in seeds])
    return p, "t", t
  if len(seeds) == 1:
    a, b = raw[seeds[0]], base[seeds[0]]
    ua, ub = _per_user(a, metric), _per_user(b, metric)
    if ua is not None and ub is not None and len(ua) == len(ub) and _population(a) == _population(b):
      boot = paired_bootstrap(ua, ub)
      return boot["p"], "bootstrap", float(np.sign(boot["mean"]))
  return float("nan"), "", float("nan")


def build(records: list[dict], layout: dict, metric: str, kind: str = "metric", alpha: float = ALPHA) -> Table:
  """The table of `metric` over done records (each: overrides, test metrics, and optionally
  test_rank, budget, population, not_applicable as written by xrec/train/runner.py)."""
  if kind not in ("metric", "gain"):
    raise ValueError(f"Unknown table kind {kind!r}; valid: ['metric', 'gain']")
  grid = collect(records, layout, metric)
  rows = ordered(row for row, _ in grid)
  columns = ordered(column for _, column in grid)
  if kind == "gain" and "scratch" not in rows:
    raise ValueError(f"a gain table needs a 'scratch' row; rows: {rows}")

  def applicable(slot):
    return {s: r for s, r in (slot or {}).items() if not r.get("not_applicable")}

  # Every comparison of the table, corrected together (the gain table runs the same family). A
  # pair is one test: "zero_shot vs scratch" is not counted again as "scratch vs zero_shot".
  tests, family = {}, {}
  for column in columns:
    for row in rows:
      raw = applicable(grid.get((row, column)))
      for baseline in BASELINES:
        base = applicable(grid.get((baseline, column)))
        if baseline != row and raw and base:
          tests[(row, column, baseline)] = _compare(raw, base, metric)
          family.setdefault((column, frozenset((row, baseline))), tests[(row, column, baseline)][0])
  pairs = list(family)
  corrected = dict(zip(pairs, holm([family[k] for k in pairs])))
  adjusted = {(row, column, baseline): corrected[(column, frozenset((row, baseline)))]
              for row, column, baseline in tests}
  keys = pairs

  shown_rows = [r for r in rows if r != "scratch"] if kind == "gain" else rows
  cells = {}
  for column in columns:
    for row in shown_rows:
      slot = grid.get((row, column))
      if not slot:
        continue
      raw = applicable(slot)
      if not raw:  # every seed n/a
        first = next(iter(slot.values()))
        cells[(row, column)] = TableCell(values={}, mean=float("nan"), std=float("nan"), ci=float("nan"),
                                         p={}, p_raw={}, test={}, not_applicable=first["not_applicable"])
        continue
      values = {s: r["test"][metric] for s, r in raw.items()}
      per_user = None
      if len(raw) == 1:
        per_user = _per_user(next(iter(raw.values())), metric)
      if kind == "gain":
        base = applicable(grid.get(("scratch", column)))
        values = {s: v - base[s]["test"][metric] for s, v in values.items() if s in base}
        if not values:
          continue
        if per_user is not None and len(base) == 1:
          base_record = next(iter(base.values()))
          ub = _per_user(base_record, metric)
          same = ub is not None and len(ub) == len(per_user) and _population(base_record) == _population(
              next(iter(raw.values())))
          per_user = per_user - ub if same else None
      mean, std = mean_std(list(values.values()))
      if len(values) >= 2:
        ci = t_interval(list(values.values()))
      elif per_user is not None:
        low, high = bootstrap_interval(per_user)
        ci = (high - low) / 2
      else:
        ci = float("nan")
      cell = TableCell(values=values, mean=mean, std=std, ci=ci, p={}, p_raw={}, test={})
      for baseline in BASELINES:
        key = (row, column, baseline)
        if key not in tests:
          continue
        p_raw, test, t = tests[key]
        cell.p_raw[baseline], cell.p[baseline], cell.test[baseline] = p_raw, adjusted[key], test
        if adjusted[key] == adjusted[key] and adjusted[key] < alpha:
          better, worse = MARKERS[baseline]
          cell.marks += better if t > 0 else worse
      cell.still_improving = sum(bool((r.get("budget") or {}).get("best_is_last_eval")) for r in raw.values())
      cell.first_eval = sum(peaked_at_first_eval(r) for r in raw.values())
      cells[(row, column)] = cell
    means = [cells[(r, column)].mean for r in shown_rows
             if (r, column) in cells and not cells[(r, column)].not_applicable]
    if means:
      for r in shown_rows:
        c = cells.get((r, column))
        if c is not None and not c.not_applicable and c.mean == max(means):
          c.best = True
  table = Table(metric, kind, layout["rows"], list(layout["columns"]), shown_rows, columns, cells, alpha,
                comparisons=sum(1 for k in keys if family[k] == family[k]))
  table.caption = protocol_caption(table, grid)
  return table


def protocol_caption(table: Table, grid: dict) -> list[str]:
  """What the table's numbers were measured on: population(s), budget, item overlap."""
  lines = []
  pops = {}
  for (row, column), slot in grid.items():
    for r in slot.values():
      if r.get("population"):
        pops.setdefault(column, {})[r["population"].get("keys_sha256")] = r["population"]
  if pops:
    by_text = {}
    for column, found in pops.items():
      if len(found) > 1:
        lines.append(f"WARNING: the cells of {table.column_text(column)} were evaluated on "
                     f"{len(found)} different user populations")
      p = next(iter(found.values()))
      by_text.setdefault(f"{p['users']:,} users ({p['description']})", []).append(column)
    if len(by_text) == 1:
      lines.append(f"Every cell is evaluated on the same {next(iter(by_text))}; the user fraction "
                   "limits training users only.")
    else:
      for text, cols in by_text.items():
        lines.append(f"{', '.join(table.column_text(c) for c in cols)}: evaluated on {text}.")
  budgets = {(b.get("num_steps"), b.get("eval_every_steps"), tuple(b.get("eval_at_steps") or ()),
              b.get("early_stopping_patience"))
             for slot in grid.values() for r in slot.values() for b in [r.get("budget") or {}]
             if b.get("num_steps")}
  if budgets:
    def cadence(every, extra):
      return f"validation every {every}" + (f" and at steps {', '.join(map(str, extra))}" if extra else "")
    text = "; ".join(f"{s:,} steps, {cadence(e, x)}, early stopping after {p} {'regular ' if x else ''}evaluations "
                     f"without improvement" if p else f"{s:,} steps, {cadence(e, x)}, no early stopping"
                     for s, e, x, p in sorted(budgets))
    lines.append(f"Training budget of every trained cell: {text}.")
  overlaps = {}
  for (row, column), slot in grid.items():
    for r in slot.values():
      o = r.get("item_overlap")
      if o:
        overlaps[column] = o
  if overlaps:
    texts = {column: (f"{o['overlap_items']:,} of {o['target_items']:,} target items "
                      f"({percent(o.get('interaction_share', o['item_share']))} of target interactions)")
             for column, o in overlaps.items()}
    if len(set(texts.values())) == 1:
      lines.append(f"Item overlap with the source: {next(iter(texts.values()))}.")
    else:
      lines.append("Item overlap with the source: " + "; ".join(
          f"{table.column_text(c)}: {t}" for c, t in texts.items()) + ".")
  return lines


def percent(share: float) -> str:
  """`share` as a percentage at one decimal, with more where one would round a share below 1 up to
  100.0% or one above 0 down to 0.0% (99.96%, not 100.0%: a caption must be literally true)."""
  if not math.isfinite(share):
    return "n/a"
  for decimals in range(1, 5):
    text = f"{100 * share:.{decimals}f}"
    if not ((share < 1 and float(text) >= 100) or (share > 0 and float(text) <= 0)):
      return text + "%"
  return "<0.0001%" if share < 0.5 else ">99.9999%"


def cell_text(cell: TableCell, kind: str = "metric", plus_minus: str = "±") -> str:
  """`mean ± 95% CI half-width` at 4 decimals (gains signed); the mean alone when no CI exists."""
  if cell.not_applicable:
    return cell.not_applicable.split(":")[0]
  mean = f"{cell.mean:+.4f}" if kind == "gain" else f"{cell.mean:.4f}"
  return f"{mean} {plus_minus} {cell.ci:.4f}" if cell.ci == cell.ci else mean


def peaked_at_first_eval(record: dict) -> bool:
  """The record's best validation step is its first evaluation after step 0 (the first of
  train.eval_at_steps, or train.eval_every_steps) and later evaluations were all lower: it may have
  peaked anywhere before that evaluation, which a finer cadence would show. Read from the record's
  budget, so records written before this check get it too."""
  budget = record.get("budget") or {}
  every, steps, last = budget.get("eval_every_steps"), budget.get("num_steps"), budget.get("last_eval_step")
  best = record.get("best_step")
  if not (every and steps and best and last):
    return False
  first = min([int(s) for s in budget.get("eval_at_steps") or ()] + [int(every), int(steps)])
  return int(best) == first and int(best) < int(last)


def marks_text(cell: TableCell) -> str:
  """The cell's test marks, then † (still improving) and ‡ (peaked at the first evaluation) where they apply."""
  return cell.marks + (STILL_IMPROVING if cell.still_improving else "") + (FIRST_EVAL if cell.first_eval else "")


def legend(table: Table) -> str:
  what = (f"test {table.metric} at the best validation checkpoint" if table.kind == "metric" else
          f"gain in test {table.metric} over scratch (paired, at the best validation checkpoints)")
  ns = sorted({c.n for c in table.cells.values() if not c.not_applicable})
  tests = sorted({t for c in table.cells.values() for t in c.test.values()})
  how = {"t": "paired t-test over seeds (exact sign-flip p where the differences are constant)",
         "bootstrap": f"per-user paired bootstrap ({BOOTSTRAP_RESAMPLES:,} resamples of the evaluation users)"}
  spread = ("95% CI over seeds (t interval)" if ns and ns[-1] >= 2 else
            "95% CI from a per-user bootstrap (one seed)")
  text = (f"{what}; mean ± {spread}; seeds per cell: {', '.join(map(str, ns))}; bold: best mean per "
          f"column; ▲/▼: significantly above/below scratch (▼ = negative transfer), △/▽: above/below "
          f"zero_shot")
  if tests:
    text += (f" ({' or '.join(how[t] for t in tests)}, two-sided, Holm-Bonferroni corrected over the "
             f"table's {table.comparisons} comparisons, p < {table.alpha:g})")
  text += (f"; {STILL_IMPROVING}: the best validation step was the last evaluation of the budget in "
           "some seed (still improving)")
  if any(c.first_eval for c in table.cells.values()):
    text += (f"; {FIRST_EVAL}: the best validation step was the first evaluation after step 0 in some seed "
             "(the peak may lie before it: earlier evaluations, train.eval_at_steps, would place it)")
  if any(c.not_applicable for c in table.cells.values()):
    text += "; n/a: zero_shot on a target whose items the source barely knows (transfer.min_item_overlap)"
  return text + "."


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
      out.append((f"**{text}**" if cell.best else text) + marks_text(cell))
    lines.append("| " + " | ".join(out) + " |")
  lines += ["", legend(table)]
  if table.caption:
    lines += [""] + table.caption
  return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
  return "".join("\\" + ch if ch in "_%&#$" else ch for ch in text)


def _latex_symbols(text: str) -> str:
  for mark, name in LATEX_MARKERS.items():
    text = text.replace(mark, f"${name}$")
  return text


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
      text = _latex_escape(cell_text(cell, table.kind, r"$\pm$")).replace(r"\$\pm\$", r"$\pm$")
      text = rf"\textbf{{{text}}}" if cell.best else text
      marks = marks_text(cell)
      if marks:
        text += "$^{" + "".join(LATEX_MARKERS[m] for m in marks) + "}$"
      out.append(text)
    lines.append(" & ".join(out) + r" \\")
  lines += [r"\bottomrule", r"\end{tabular}", "% " + _latex_symbols(legend(table))]
  lines += ["% " + line for line in table.caption]
  return "\n".join(lines) + "\n"


CSV_COLUMNS = ("metric", "kind", "row", "column", "n", "mean", "std", "ci95", "p_vs_scratch", "p_vs_zero_shot",
               "p_raw_vs_scratch", "p_raw_vs_zero_shot", "test", "marks", "best", "still_improving",
               "peaked_at_first_eval", "not_applicable", "values")


def to_csv(table: Table) -> str:
  """One line per cell; p columns are Holm-corrected (p_raw_* uncorrected), empty where untested;
  `values` lists seed:value pairs."""
  import csv
  import io
  buf = io.StringIO()
  w = csv.writer(buf, lineterminator="\n")
  w.writerow(CSV_COLUMNS)

  def num(x, fmt=".6g"):
    return "" if x is None or x != x else format(x, fmt)

  for row in table.rows:
    for column in table.columns:
      cell = table.cells.get((row, column))
      if cell is None:
        continue
      w.writerow([table.metric, table.kind, row, table.column_text(column), cell.n, num(cell.mean, ".6f"),
                  num(cell.std, ".6f"), num(cell.ci, ".6f"), *[num(cell.p.get(b)) for b in BASELINES],
                  *[num(cell.p_raw.get(b)) for b in BASELINES], ";".join(sorted(set(cell.test.values()))),
                  cell.marks, int(cell.best), cell.still_improving, cell.first_eval, cell.not_applicable,
                  ";".join(f"{s}:{v:.6f}" for s, v in cell.values.items())])
  return buf.getvalue()
