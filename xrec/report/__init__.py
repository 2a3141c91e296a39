"""Study -> report: tables (Markdown, LaTeX booktabs, CSV) and plots (PNG) in WORKDIR/report/.

  python -m xrec.report WORKDIR [--out DIR] [--alpha 0.05]

Reads WORKDIR/study.json (cells, table layout from the config's metrics()) and WORKDIR/runs.jsonl
(the last record of each cell). Only done cells enter the tables; the others are listed in
report.md with their status and error. Test metrics are those at the best validation checkpoint of
the candidate chosen on validation; report.md also lists the values the tuning chose, the
pretraining's metrics and the protocol (population, budget, item overlap).
"""

from __future__ import annotations

import os

from xrec import runindex
from xrec.report import plots
from xrec.report import tables


def load_study(workdir: str) -> tuple[dict, dict]:
  """(study.json, {cell key: last record}) of a study directory."""
  return runindex.read_study(workdir), runindex.latest_runs(workdir)


def tables_of(study: dict, runs: dict, alpha: float = tables.ALPHA) -> list[tables.Table]:
  """Per metric of the layout: the metric table, then the gain-over-scratch table when scratch ran."""
  layout = study["layout"]
  done = [runs[c["key"]] for c in study["cells"] if runs.get(c["key"], {}).get("status") == "done"]
  if not done:
    return []
  out = []
  for metric in layout["metrics"]:
    table = tables.build(done, layout, metric, "metric", alpha)
    out.append(table)
    if "scratch" in table.rows and len(table.rows) > 1:
      out.append(tables.build(done, layout, metric, "gain", alpha))
  return out


def _short(value) -> str:
  return f"{value:g}" if isinstance(value, float) else str(value)


def tuning_section(study: dict, done: list[dict]) -> list[str]:
  """The values chosen on validation per table slot, with how often (over seeds)."""
  layout = study["layout"]
  chosen, grids, extended = {}, {}, False

  def slot_of(r):
    return tables.row_label(r, layout), tuple(tables.label(r, f) for f in layout["columns"])
  tuning_seeds = {}  # slot -> the seeds whose grid other seeds reused (tune.seed)
  for r in done:
    if (r.get("tuning") or {}).get("tuned_on_seed") is not None:
      tuning_seeds.setdefault(slot_of(r), set()).add(r["tuning"]["tuned_on_seed"])
  for r in done:
    tuning = r.get("tuning") or {}
    if not tuning.get("tuned"):
      continue
    slot = slot_of(r)
    text = ", ".join(f"{k.rsplit('.', 1)[-1]} {_short(v)}" for k, v in sorted(tuning["chosen"].items()))
    unmoved = all(c.get("best_step") == 0 for c in tuning.get("candidates", ())) and tuning.get("candidates")
    edges = runindex.grid_edges(tuning)
    tuned_on = tuning.get("tuned_on_seed")
    if unmoved and tuned_on is None:
      # every candidate best at step 0: training never beat the initial model, so no value was chosen
      text = "none moved (all best at step 0)"
    else:  # a seed that trained another seed's choice: its own run may still have stayed at step 0
      text += (" (edge)" if edges else "") + (", best at step 0" if unmoved else "")
    seed = (r.get("overrides") or {}).get(layout.get("seed", "seed"))
    if tuned_on is None and seed in tuning_seeds.get(slot, ()):
      tuned_on = seed  # the grid's own seed, whose choice the others reused
    if tuned_on is not None:
      text += f" [tuned on seed {tuned_on}]"
    chosen.setdefault(slot, {}).setdefault(text, 0)
    chosen[slot][text] += 1
    for field, values in tuning["tuned"].items():
      grids.setdefault(field, set()).update(values)
    extended = extended or bool(tuning.get("extended"))
  if not chosen:
    return []
  rows = tables.ordered(s[0] for s in chosen)
  columns = tables.ordered(s[1] for s in chosen)
  table = tables.Table("", "metric", layout["rows"], layout["columns"], rows, columns, {})
  header = [layout["rows"].rsplit(".", 1)[-1]] + (
      [table.column_text(c) for c in columns] if layout["columns"] else ["chosen"])
  lines = ["", "## Values chosen on validation", "",
           "Grid: " + "; ".join(f"`{f}` in {{{', '.join(_short(v) for v in sorted(vals))}}}" for f, vals in grids.items())
           + (" (with the values tune.extend_at_edge added beyond an edge a cell chose: each such cell trained "
              "one more candidate past it and chose among them all)" if extended else "")
           + f". Each cell's candidates were trained with the same budget; the one with the best "
           f"{(done[0].get('tuning') or {}).get('metric', 'validation metric')} was kept "
           "(counts: seeds that chose the value; \"(edge)\": the value is the smallest or largest of "
           "its grid, so the best one may lie outside it; \"none moved\": every candidate's best validation "
           "was its step 0, so training never improved on the initial model; \"[tuned on seed s]\": the "
           "grid ran on seed s only and the other seeds trained its choice, tune.seed, counted with it; "
           "\"best at step 0\": such a seed's own run never beat its initial model).", "",
           "| " + " | ".join(header) + " |", "|---" + "|---" * len(columns) + "|"]
  for row in rows:
    out = [str(row)]
    for column in columns:
      found = chosen.get((row, column), {})
      out.append("; ".join(f"{text} ×{n}" for text, n in sorted(found.items(), key=lambda x: -x[1])) or "–")
    lines.append("| " + " | ".join(out) + " |")
  notes = {}
  for r in done:
    for k, v in (r.get("tuning") or {}).items():
      if k.startswith("transfer.") or k == "skipped":
        text = f"{k} {v}" if k != "skipped" else f"not tuned: {v}"
        row = str(tables.row_label(r, layout))
        if row not in notes.setdefault(text, []):
          notes[text].append(row)
  return (lines + ([""] + [f"- {', '.join(rows)}: {text}" for text, rows in notes.items()] if notes else [])
          + _dropped_while_improving(done, layout))


def _dropped_while_improving(done: list[dict], layout: dict) -> list[str]:
  """Candidates successive halving dropped at a rung where their validation was still rising (the
  rung's ranking need not be the final one: the table's choice is then provisional)."""
  out = []
  for r in done:
    tuning = r.get("tuning") or {}
    seed = tuning.get("tuned_on_seed", r.get("overrides", {}).get("seed"))  # a reused grid: the seed it ran on
    for d in ((tuning.get("halving") or {}).get("dropped") or ()):
      if not d.get("improving"):
        continue
      slot = ", ".join([str(tables.row_label(r, layout))] + [str(tables.label(r, f)) for f in layout["columns"]]
                       + [f"seed {seed}"] * (seed is not None))
      values = ", ".join(f"{k.rsplit('.', 1)[-1]} {_short(v)}" for k, v in sorted(d["overrides"].items()))
      kept = d.get("kept_valid_so_far")
      line = (f"- {slot}: {values} dropped at step {d['rung_step']} while still improving (valid "
              f"{d['valid_so_far']:.4f} at its last evaluation"
              + (f"; the kept candidates' best so far {kept:.4f})" if kept is not None else ")"))
      if line not in out:  # the seeds that reused one grid (tune.seed) carry its drops: listed once
        out.append(line)
  if not out:
    return []
  return ["", "Dropped by successive halving while still improving (best validation at the rung, its "
          "last evaluation: a longer run might have ranked it otherwise):", ""] + out


def pretraining_section(done: list[dict]) -> list[str]:
  """Each pretrained source model once, with the seeds whose cells transferred from it. A model is a
  pretraining stage and what it reached: one stage trained again (a carried study on another
  machine or session, launch.py --continue_from) can give another model, listed apart."""
  pre, seeds, codes, hosts = {}, {}, {}, {}
  for r in done:
    if r.get("pretrain"):
      p = r["pretrain"]
      model = (r["stages"].get("pretrain"), round(float(p["valid"]["ndcg@10"]), 6), p.get("best_step"))
      pre[model] = p
      seeds.setdefault(model, set()).add(str(r["overrides"].get("seed", "default")))
      codes.setdefault(model, set()).add(((r.get("code") or {}).get("commit") or "")[:7])
      hosts.setdefault(model, set()).add(runindex.host_label(p.get("host")))
  if not pre:
    return []
  lines = ["", "## Pretraining (source domain)", "", "| stage | valid ndcg@10 | test ndcg@10 | best step | "
           "still improving |", "|---|---:|---:|---:|---|"]
  for model, p in sorted(pre.items(), key=lambda x: (sorted(seeds[x[0]]), str(x[0]))):
    budget = p.get("budget") or {}
    named = sorted(seeds[model])
    lines.append(f"| {model[0]} (seed{'s' if len(named) > 1 else ''} {', '.join(named)}) | {p['valid']['ndcg@10']:.4f} | "
                 f"{p['test']['ndcg@10']:.4f} | {p.get('best_step')} | "
                 f"{'yes' if budget.get('best_is_last_eval') else 'no'} |")
  if any(len(s) > 1 for s in seeds.values()):
    lines.append("\nSeveral seeds transferred from one pretrained model (the study's `one_pretraining`): their "
                 "spread is the target side's (its training users, the fresh parts' init, the batches), not the "
                 "pretraining's.")
  stages = [m[0] for m in pre]
  for stage in sorted({h for h in stages if stages.count(h) > 1}, key=str):
    models = [m for m in pre if m[0] == stage]
    each = "; ".join(f"valid {m[1]:.4f} at step {m[2]} (seeds {', '.join(sorted(seeds[m]))}; code "
                     f"{', '.join(sorted(c or '?' for c in codes[m]))}; {', '.join(sorted(hosts[m]))})"
                     for m in models)
    lines.append(f"\nPretraining {stage} was trained {len(models)} times with one config (a study carried "
                 f"across machines or sessions) and gave {len(models)} different source models: {each}. A "
                 "seed's cells transferred from the model listed with it; the comparisons within a seed are "
                 "paired, the spread over seeds includes the source models'."
                 + (" XLA:CPU's arithmetic follows the CPU and the cores a process saw when JAX started, so one "
                    "config on one commit trained on another machine, or pinned to one core (`taskset`, or a "
                    "`--jobs` worker of xrec before workers pinned themselves after JAX started), gives another "
                    "model." if any((pre[m].get("host") or {}).get("platform", "cpu") == "cpu" for m in models)
                    else ""))
  for r in done:  # a carried study (launch.py --continue_from) whose pretraining was trained again
    rerun = r.get("pretrain_rerun")
    if rerun and abs(rerun["difference"]) > 1e-4:
      seen = " / ".join(f"{v:.4f}" for v in rerun["recorded_valid"])
      lines.append(f"\nTrained again for `{r['key']}`: pretraining {r['stages'].get('pretrain')} reached valid "
                   f"{rerun['valid']:.4f} where the records' {rerun['cells']} earlier cell(s) saw "
                   f"{seen}: those cells and this one transferred from different source models.")
  return lines


def code_section(done: list[dict]) -> list[str]:
  """Which code made the cells (each record's `code`: commit, uncommitted changes), counted per
  commit; nothing for records from before they named it."""
  if not any("code" in r for r in done):  # records from before they named their code
    return []
  counts = {}
  for r in done:
    code = r.get("code") or {}
    label = (code.get("commit") or "unknown")[:12] + (" with uncommitted changes" if code.get("dirty") else "")
    counts[label] = counts.get(label, 0) + 1
  return ["", "Code: " + "; ".join(f"{n} cell(s) at {label}" for label, n in counts.items()) + "."]


def write_report(workdir: str, out_dir: str | None = None, alpha: float = tables.ALPHA) -> dict:
  """Writes the tables and plots; returns {"markdown": report.md text, "files": [paths]}."""
  study, runs = load_study(workdir)
  out_dir = out_dir or os.path.join(workdir, "report")
  runindex.check_writable(out_dir, "the report is written there: pass --out DIR to write it elsewhere")
  layout = study["layout"]
  done = [runs[c["key"]] for c in study["cells"] if runs.get(c["key"], {}).get("status") == "done"]
  files, sections = [], [f"# Study report: {study.get('config_file') or workdir}", ""]
  n_cells = len(study["cells"])
  sections.append(f"{len(done)} of {n_cells} cells done.")
  for table in tables_of(study, runs, alpha):
    name = plots.slug(table.metric) if table.kind == "metric" else f"gain_{plots.slug(table.metric)}"
    for ext, render in (("md", tables.to_markdown), ("tex", tables.to_latex), ("csv", tables.to_csv)):
      path = os.path.join(out_dir, f"table_{name}.{ext}")
      with open(path, "w") as f:
        f.write(render(table))
      files.append(path)
    title = f"test {table.metric}" if table.kind == "metric" else f"gain in test {table.metric} over scratch"
    sections += ["", f"## {title}", "", tables.to_markdown(table)]
    for png in plots.write_plots(table, done, layout, out_dir):
      files.append(png)
      sections.append(f"![{os.path.basename(png)}]({os.path.basename(png)})")
  sections += tuning_section(study, done) + pretraining_section(done) + code_section(done)
  missing = [(c, runs.get(c["key"])) for c in study["cells"] if runs.get(c["key"], {}).get("status") != "done"]
  if missing:
    sections += ["", "## Cells not in the tables", "", "| index | key | status | error |", "|---:|---|---|---|"]
    for cell, record in missing:
      status = record["status"] if record else "not run"
      error = (record or {}).get("error", "").splitlines()[0][:200] if (record or {}).get("error") else ""
      sections.append(f"| {cell['index']} | {cell['key']} | {status} | {error.replace('|', '/')} |")
  markdown = "\n".join(sections) + "\n"
  path = os.path.join(out_dir, "report.md")
  with open(path, "w") as f:
    f.write(markdown)
  return {"markdown": markdown, "files": [path] + files}
