"""Fits transfer gain against the pretrained model's size and its source data (config.py here).

  python experiments/scaling/analyze.py WORKDIR [--out DIR]

Reads WORKDIR's done cells (runs.jsonl) and each pretraining stage's results.json (its params with
and without the item rows, the source interactions it trained on, where its validation peaked),
then writes DIR (default WORKDIR/scaling) with:
  scaling.json   every point (cell), every pretraining, every fit: what the README quotes
  scaling.md     the tables below
  gain_vs_params.png, gain_vs_params_no_items.png, gain_vs_source.png
Definitions (per target fraction and seed, paired; per encoder family, SASRec and HSTU):
  gain         test NDCG@10 of a transferred cell - scratch of the same family and size on the same
               target data
  gain_best    the same - the family's best scratch of any size (the size with the best mean scratch)
Fits, per (family, strategy, target fraction), over the models pretrained on all source users:
  gain = a + b log10(params) on each size's mean gain over its seeds, and with a c log10(params)^2
  term for curvature; 95% t intervals from the residuals around the fit (they hold both the seeds'
  noise and how far the sizes, one pretraining each, scatter around the curve). The verdict:
  "grows" (b's interval above 0), "reverses" (below 0), "no trend" (it holds 0); with a concave
  curvature (c's interval below 0) "saturates" when the top of the parabola lies at or beyond the
  largest size, "rises then falls" when it lies inside the sizes. The slope needs >= 3 sizes, the
  curvature >= 4. "Where it breaks": the size farthest from the line (its residual, and in units
  of the residuals' standard deviation).
Source data: gain against log10(source interactions: the training parts of the source users
the pretraining read from) for the sizes pretrained on 25 / 50 / 100%.
Zero-shot cells that do not apply (a target catalogue that shares no item: the record's
not_applicable) are left out, as the report leaves them n/a. The best scratch size of gain_best
is chosen on validation, not on the test metric the gain is read from.
Best strategy per family and size (mean test NDCG@10 over seeds), the family and size whose best
strategy scores highest per target fraction, and the front of that NDCG@10 against the seconds it cost: its pretraining
plus the cell's own stage as recorded (seed 0's cells carry the learning-rate grid's candidates;
the other seeds' cells only their one run; candidates dropped by halving are not counted).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xrec import runindex  # noqa: E402
from xrec.train.runner import STAGES_DIR  # noqa: E402

METRIC = "ndcg@10"
SOURCE_FIELD = "experiment.pretrain.data.user_fraction"


def pretraining(workdir: str, stage: str, cache: dict) -> dict:
  """What the scaling fit needs of one pretraining stage (from its results.json)."""
  if stage not in cache:
    path = os.path.join(workdir, STAGES_DIR, stage, "results.json")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: analyze.py needs the study's pretraining stages "
                              "(run it on the workdir the study ran in)")
    with open(path) as f:
      r = json.load(f)
    cache[stage] = {"stage": stage, "params": int(r["param_count"]),
                    "params_no_items": int(r["param_count"]) - int(r.get("item_param_count", 0)),
                    "source_interactions": r["dataset"].get("training_interactions"),
                    "source_users": r["dataset"]["training_users"], "valid": r["valid"][METRIC],
                    "best_step": r["best_step"], "last_eval_step": r["budget"]["last_eval_step"],
                    "best_is_last_eval": r["budget"]["best_is_last_eval"],
                    "stopped_early": r["budget"]["stopped_early"],
                    "wall_seconds": float(r["wall_seconds"]["total"] if isinstance(r.get("wall_seconds"), dict)
                                          else r.get("wall_seconds", 0.0))}
  return cache[stage]


def points(workdir: str) -> tuple[list[dict], dict]:
  """One point per done cell: its size, source fraction, strategy, target fraction, seed, test
  NDCG@10, and its pretraining (None for scratch)."""
  cache: dict = {}
  out = []
  for r in runindex.latest_runs(workdir).values():
    if r.get("status") != "done" or r.get("not_applicable"):
      continue
    o = r["overrides"]
    pre = pretraining(workdir, r["stages"]["pretrain"], cache) if "pretrain" in r.get("stages", {}) else None
    family = o.get("model.name", "sasrec")
    out.append({"strategy": o["transfer.strategy"], "family": family,
                "size": (int(o["model.embed_dim"]), int(o[f"model.{family}.num_layers"])),
                "source": float(o.get(SOURCE_FIELD, 1.0)) if pre else None,
                "target": float(o["data.user_fraction"]), "seed": int(o["seed"]), "ndcg": float(r["test"][METRIC]),
                "valid": float(r["valid"][METRIC]),
                "params": int(r["total_params"]), "best_is_last_eval": bool(r["budget"]["best_is_last_eval"]),
                # the cell's own stage as recorded (module docstring); the record's stage seconds count
                # the pretraining too (reused or not), which is counted apart here
                "wall_seconds": float(r.get("stage_wall_seconds") or 0.0) - (pre["wall_seconds"] if pre else 0.0),
                "pretrain": pre["stage"] if pre else None})
  return out, cache


def add_gains(pts: list[dict]) -> None:
  """Sets each transferred point's gain (over scratch of its family and size) and gain_best (over
  the family's scratch size with the best mean validation metric), paired by target fraction and
  seed; None where the scratch cell is missing."""
  scratch = {(p["family"], p["size"], p["target"], p["seed"]): p["ndcg"] for p in pts if p["strategy"] == "scratch"}
  by_size = defaultdict(list)
  for p in pts:
    if p["strategy"] == "scratch":
      by_size[(p["family"], p["size"], p["target"])].append(p["valid"])
  best_size = {}
  for (family, size, target), vs in by_size.items():
    key = (family, target)
    if key not in best_size or np.mean(vs) > np.mean(by_size[(family, best_size[key], target)]):
      best_size[key] = size
  for p in pts:
    if p["strategy"] == "scratch":
      continue
    same = scratch.get((p["family"], p["size"], p["target"], p["seed"]))
    best = scratch.get((p["family"], best_size.get((p["family"], p["target"])), p["target"], p["seed"]))
    p["gain"] = None if same is None else p["ndcg"] - same
    p["gain_best"] = None if best is None else p["ndcg"] - best


def _design(x: np.ndarray, degree: int) -> np.ndarray:
  return np.stack([x ** k for k in range(degree + 1)], axis=1)


def _ols(x: np.ndarray, y: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray, int]:
  """Coefficients, their standard errors and the residual degrees of freedom of a polynomial fit."""
  design = _design(x, degree)
  coef, *_ = np.linalg.lstsq(design, y, rcond=None)
  dof = len(x) - degree - 1
  if dof < 1:
    return coef, np.full(len(coef), np.nan), dof
  sigma2 = float(((y - design @ coef) ** 2).sum()) / dof
  cov = sigma2 * np.linalg.inv(design.T @ design)
  return coef, np.sqrt(np.diag(cov)), dof


def fit(xs: np.ndarray, groups: list[np.ndarray]) -> dict:
  """gain = a + b log10 x (and + c log10(x)^2) fitted to each size's mean gain over its seeds, with
  95% t intervals from the residuals around the fit: they hold both the seeds' noise in the means
  and how far the sizes (one pretraining each) scatter around the curve. groups[i]: the gains
  (one per seed) at xs[i]. The slope needs >= 3 sizes, the curvature >= 4."""
  from scipy import stats
  x = np.log10(np.asarray(xs, float))
  if len(x) < 3:
    return {"points": int(len(x)), "verdict": "too few sizes (an interval needs >= 3)"}
  x0 = x - x.mean()  # centred: the slope and curvature do not trade off against the intercept
  y = np.array([g.mean() for g in groups])
  lin, lin_se, dof = _ols(x0, y, 1)
  half = stats.t.ppf(0.975, dof) * lin_se[1]
  out = {"points": int(len(x)), "seeds": [int(len(g)) for g in groups], "slope_per_decade": float(lin[1]),
         "slope_ci": [float(lin[1] - half), float(lin[1] + half)], "intercept_at_mean": float(lin[0]),
         "mean_log10": float(x.mean())}
  resid = y - (lin[0] + lin[1] * x0)
  scale = resid.std(ddof=2) if len(x) > 2 else np.nan
  worst = int(np.argmax(np.abs(resid)))
  out["worst_point"] = {"log10": float(x[worst]), "residual": float(resid[worst]),
                        "residual_in_sd": float(resid[worst] / scale) if scale > 0 else None}
  verdict = "grows" if out["slope_ci"][0] > 0 else "reverses" if out["slope_ci"][1] < 0 else "no trend"
  if len(x) >= 4:
    quad, quad_se, qdof = _ols(x0, y, 2)
    qhalf = stats.t.ppf(0.975, qdof) * quad_se[2]
    out.update(curvature=float(quad[2]), curvature_ci=[float(quad[2] - qhalf), float(quad[2] + qhalf)])
    if out["curvature_ci"][1] < 0:  # concave: where is the top of the parabola?
      vertex = -quad[1] / (2 * quad[2])
      out["vertex_log10"] = float(vertex + x.mean())
      if vertex >= x0.max():
        verdict = "saturates"  # still rising, flattening, at the largest size
      elif vertex > x0.min():
        verdict = "rises then falls"  # the top lies inside the sizes measured
  out["verdict"] = verdict
  return out


def _groups(pts, key, value="gain"):
  g = defaultdict(list)
  for p in pts:
    if p.get(value) is not None:
      g[key(p)].append(p[value])
  return {k: np.asarray(v, float) for k, v in g.items()}


def fits(pts: list[dict], pre: dict) -> dict:
  """Every fit of the module docstring, keyed by a readable name."""
  out = {}
  full = [p for p in pts if p["strategy"] != "scratch" and p["source"] == 1.0]
  for count in ("params", "params_no_items"):
    for value in ("gain", "gain_best"):
      groups = _groups(full, lambda p: (p["family"], p["strategy"], p["target"], pre[p["pretrain"]][count]), value)
      by = defaultdict(dict)
      for (family, strategy, target, x), g in groups.items():
        by[(family, strategy, target)][x] = g
      for (family, strategy, target), gs in sorted(by.items()):
        xs = sorted(gs)
        out[f"{value} vs {count} · {family} · {strategy} · target {target:g}"] = fit(np.array(xs),
                                                                                    [gs[x] for x in xs])
  source = [p for p in pts if p["strategy"] != "scratch" and p["pretrain"]]
  groups = _groups(source, lambda p: (p["family"], p["strategy"], p["target"], p["size"],
                                      pre[p["pretrain"]]["source_interactions"]))
  by = defaultdict(dict)
  for (family, strategy, target, size, x), g in groups.items():
    if x:
      by[(family, strategy, target, size)][x] = g
  for (family, strategy, target, size), gs in sorted(by.items()):
    if len(gs) >= 2:
      xs = sorted(gs)
      out[f"gain vs source interactions · {family} · {strategy} · target {target:g} · d{size[0]} x{size[1]}"] = fit(
          np.array(xs), [gs[x] for x in xs])
  return out


def best_strategies(pts: list[dict], pre: dict) -> list[dict]:
  """Per (target fraction, family, size) on all source users: each strategy's mean NDCG@10, the best
  one, and the wall seconds of its pretraining plus its cell (mean over seeds)."""
  rows = []
  cells = defaultdict(list)
  for p in pts:
    if p["strategy"] == "scratch" or p["source"] == 1.0:
      cells[(p["target"], p["family"], p["size"])].append(p)
  for (target, family, size), ps in sorted(cells.items()):
    means = {s: float(np.mean([p["ndcg"] for p in ps if p["strategy"] == s])) for s in {p["strategy"] for p in ps}}
    best = max(means, key=means.get)
    cost = [p["wall_seconds"] + (pre[p["pretrain"]]["wall_seconds"] if p["pretrain"] else 0.0)
            for p in ps if p["strategy"] == best]
    rows.append({"target": target, "family": family, "size": list(size), "means": means, "best": best,
                 "best_ndcg": means[best],
                 "best_wall_seconds": float(np.mean(cost)),
                 "params": next((pre[p["pretrain"]]["params"] for p in ps if p["pretrain"]), None)})
  return rows


def compute_optimal(rows: list[dict]) -> dict:
  """Per target fraction: the (family, size) with the highest best-strategy NDCG@10, and those on
  the front of NDCG@10 against wall seconds (no cheaper one scores as high): which model to pretrain
  for a compute budget is read off the front."""
  out = {}
  for target in sorted({r["target"] for r in rows}):
    rs = sorted((r for r in rows if r["target"] == target), key=lambda r: r["best_wall_seconds"])
    top = max(rs, key=lambda r: r["best_ndcg"])
    front, best_so_far = [], -np.inf
    for r in rs:
      if r["best_ndcg"] > best_so_far:
        front.append({"family": r["family"], "size": r["size"], "ndcg": r["best_ndcg"],
                      "wall_seconds": r["best_wall_seconds"], "strategy": r["best"]})
        best_so_far = r["best_ndcg"]
    out[f"{target:g}"] = {"best_family": top["family"], "best_size": top["size"], "best_strategy": top["best"],
                          "ndcg": top["best_ndcg"],
                          "front": front}
  return out


def _plot(pts, pre, count, path, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  targets = sorted({p["target"] for p in pts})
  fig, axes = plt.subplots(1, len(targets), figsize=(5.5 * len(targets), 4), squeeze=False)
  for ax, target in zip(axes[0], targets):
    groups = _groups([p for p in pts if p["target"] == target and p["source"] == 1.0],
                     lambda p: (p["family"], p["strategy"], pre[p["pretrain"]][count]))
    for family, strategy in sorted({(f, s) for f, s, _ in groups}):
      xs = sorted(x for f, s, x in groups if (f, s) == (family, strategy))
      gs = [groups[(family, strategy, x)] for x in xs]
      errs = [1.96 * g.std(ddof=1) / np.sqrt(len(g)) if len(g) > 1 else 0.0 for g in gs]
      ax.errorbar(xs, [g.mean() for g in gs], yerr=errs, marker="o" if family == "sasrec" else "s", capsize=3,
                  linestyle="-" if family == "sasrec" else "--", label=f"{family} {strategy}")
    ax.axhline(0, color="gray", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel(f"pretrained {count.replace('_', ' ')}")
    ax.set_ylabel("test NDCG@10 gain over scratch of the same size")
    ax.set_title(f"{title}, target fraction {target:g}")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _plot_source(pts, pre, path):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  groups = _groups([p for p in pts if p["pretrain"]],
                   lambda p: (p["family"], p["strategy"], p["target"], tuple(p["size"]),
                              pre[p["pretrain"]]["source_interactions"]))
  series = defaultdict(list)
  for (family, strategy, target, size, x), g in groups.items():
    series[(family, strategy, target, size)].append((x, g.mean()))
  fig, ax = plt.subplots(figsize=(7, 4.5))
  for key, xy in sorted(series.items()):
    if len(xy) >= 2:
      xy.sort()
      ax.plot([a for a, _ in xy], [b for _, b in xy], marker="o",
              label=f"{key[0]} {key[1]} t{key[2]:g} d{key[3][0]}x{key[3][1]}")
  ax.axhline(0, color="gray", lw=0.8)
  ax.set_xscale("log")
  ax.set_xlabel("source interactions the pretraining read")
  ax.set_ylabel("test NDCG@10 gain over scratch")
  ax.legend(fontsize=6, ncol=2)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _markdown(result: dict) -> str:
  lines = ["# Scaling study: transfer gain against the pretrained model", "",
           "## Pretrainings", "", "| stage | params | without item rows | source users | source interactions | "
           "valid NDCG@10 | best step / last evaluation |", "|---|---:|---:|---:|---:|---:|---|"]
  for p in result["pretrainings"]:
    lines.append(f"| {p['stage']} | {p['params']:,} | {p['params_no_items']:,} | {p['source_users']:,} | "
                 f"{p['source_interactions'] or 0:,} | {p['valid']:.4f} | {p['best_step']} / {p['last_eval_step']}"
                 f"{' (still improving)' if p['best_is_last_eval'] else ''} |")
  lines += ["", "## Fits (slope per decade of params, 95% t interval from the residuals)", "",
            "| fit | sizes | slope | interval | curvature interval | verdict | worst point (log10, residual/SD) |",
            "|---|---:|---:|---|---|---|---|"]
  for name, f in result["fits"].items():
    if "slope_per_decade" not in f:
      lines.append(f"| {name} | {f['points']} | – | – | – | {f['verdict']} | – |")
      continue
    curv = f"[{f['curvature_ci'][0]:+.4f}, {f['curvature_ci'][1]:+.4f}]" if "curvature_ci" in f else "–"
    w = f.get("worst_point") or {}
    worst = (f"{w['log10']:.2f}, {w['residual_in_sd']:+.1f}" if w.get("residual_in_sd") is not None else "–")
    lines.append(f"| {name} | {f['points']} | {f['slope_per_decade']:+.4f} | [{f['slope_ci'][0]:+.4f}, "
                 f"{f['slope_ci'][1]:+.4f}] | {curv} | {f['verdict']} | {worst} |")
  lines += ["", "## Best strategy per family and size (all source users; mean test NDCG@10 over seeds)", "",
            "| target fraction | family | d x blocks | best | its NDCG@10 | wall s (pretraining + cell) "
            "| every strategy |",
            "|---:|---|---|---|---:|---:|---|"]
  for r in result["best"]:
    every = ", ".join(f"{s} {v:.4f}" for s, v in sorted(r["means"].items()))
    lines.append(f"| {r['target']:g} | {r['family']} | {r['size'][0]} x {r['size'][1]} | {r['best']} | "
                 f"{r['best_ndcg']:.4f} | "
                 f"{r['best_wall_seconds']:.0f} | {every} |")
  lines += ["", "## Compute-optimal size per target fraction", ""]
  for target, c in result["compute_optimal"].items():
    front = "; ".join(f"{f['family']} {f['size'][0]}x{f['size'][1]} {f['strategy']} {f['ndcg']:.4f} at "
                      f"{f['wall_seconds']:.0f} s" for f in c["front"])
    lines.append(f"- target {target}: best {c['best_family']} {c['best_size'][0]} x {c['best_size'][1]} "
                 f"({c['best_strategy']}, "
                 f"{c['ndcg']:.4f}); front: {front}")
  return "\n".join(lines) + "\n"


def analyze(workdir: str, out_dir: str | None = None) -> dict:
  pts, pre = points(workdir)
  if not pts:
    raise ValueError(f"{workdir} has no done cell (runs.jsonl): run the study first")
  add_gains(pts)
  result = {"workdir": os.path.abspath(workdir), "points": pts,
            "pretrainings": sorted(pre.values(), key=lambda p: p["params"]),
            "fits": fits(pts, pre)}
  result["best"] = best_strategies(pts, pre)
  result["compute_optimal"] = compute_optimal(result["best"])
  out_dir = out_dir or os.path.join(workdir, "scaling")
  os.makedirs(out_dir, exist_ok=True)
  runindex.write_json_atomic(os.path.join(out_dir, "scaling.json"), result)
  with open(os.path.join(out_dir, "scaling.md"), "w") as f:
    f.write(_markdown(result))
  transferred = [p for p in pts if p["strategy"] != "scratch" and p.get("gain") is not None]
  if transferred:
    _plot(transferred, pre, "params", os.path.join(out_dir, "gain_vs_params.png"), "item table included")
    _plot(transferred, pre, "params_no_items", os.path.join(out_dir, "gain_vs_params_no_items.png"),
          "item table excluded")
    _plot_source(transferred, pre, os.path.join(out_dir, "gain_vs_source.png"))
  return result


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdir")
  parser.add_argument("--out", default=None, help="output folder (default WORKDIR/scaling)")
  args = parser.parse_args(argv)
  result = analyze(args.workdir, args.out)
  print(f"{len(result['points'])} cells, {len(result['pretrainings'])} pretrainings, {len(result['fits'])} fits -> "
        f"{args.out or os.path.join(args.workdir, 'scaling')}")


if __name__ == "__main__":
  main()
