"""Cell-by-cell comparison of two runs of experiments/hooks_move/config.py (the code before and
after a move): for every cell key in both run indexes, the test metrics, best step and valid
NDCG@10, and the largest absolute difference. Writes Markdown to stdout and, with --out, JSON.

  python experiments/hooks_move/compare.py BEFORE_WORKDIR AFTER_WORKDIR [--out compare.json]
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

from xrec import runindex  # noqa: E402

METRICS = ("ndcg@10", "hr@10", "ndcg@20", "mrr@10")
# what the runtime hooks add to results.json, compared leaf by leaf (timings and paths aside)
SECTIONS = ("pruning", "domains", "transfer/teacher", "transfer/cross_user", "transfer/synthesis")
TIMING = ("seconds", "per_second", "path", "model")


def _section(results: dict, name: str):
  for part in name.split("/"):
    results = (results or {}).get(part)
  return results


def _leaves(tree, prefix=""):
  if isinstance(tree, dict):
    for k, v in tree.items():
      if not any(t in k for t in TIMING):
        yield from _leaves(v, f"{prefix}{k}/")
  elif isinstance(tree, list):
    for i, v in enumerate(tree):
      yield from _leaves(v, f"{prefix}{i}/")
  else:
    yield prefix.rstrip("/"), tree


def _results(workdir: str, record: dict) -> dict:
  with open(os.path.join(workdir, "stages", record["stages"]["transfer"], "results.json")) as f:
    return json.load(f)


def hook_sections(before: str, after: str, ra: dict, rb: dict) -> dict:
  """Per section a hook writes: the number of leaves compared and the largest difference (numbers)
  or mismatch count (other values)."""
  a, b = _results(before, ra), _results(after, rb)
  out = {}
  for name in SECTIONS:
    sa, sb = _section(a, name), _section(b, name)
    if sa is None and sb is None:
      continue
    la, lb = dict(_leaves(sa)), dict(_leaves(sb))
    numeric = [abs(la[k] - lb[k]) for k in la if k in lb and isinstance(la[k], (int, float)) and
               isinstance(lb[k], (int, float))]
    other = [k for k in la if k in lb and not isinstance(la[k], (int, float)) and la[k] != lb[k]]
    out[name] = {"leaves": len(la), "missing_after": sorted(set(la) - set(lb)), "extra_after": sorted(set(lb) - set(la)),
                 "max_abs_diff": max(numeric, default=0.0), "values_differing": other}
  return out


def done(workdir: str) -> dict:
  return {k: r for k, r in runindex.latest_runs(workdir).items() if r.get("status") in ("done", "cached")}


def compare(before: str, after: str) -> dict:
  a, b = done(before), done(after)
  rows = []
  for key in [k for k in b if k in a]:
    ra, rb = a[key], b[key]
    diffs = {m: abs(ra["test"][m] - rb["test"][m]) for m in METRICS}
    rows.append({"key": key, "before": {m: ra["test"][m] for m in METRICS}, "after": {m: rb["test"][m] for m in METRICS},
                 "best_step": [ra["best_step"], rb["best_step"]],
                 "valid_ndcg@10": [ra["valid"]["ndcg@10"], rb["valid"]["ndcg@10"]],
                 "max_abs_diff": max(diffs.values()), "hook_sections": hook_sections(before, after, ra, rb)})
  return {"before": before, "after": after, "rows": rows, "only_before": sorted(set(a) - set(b)),
          "only_after": sorted(set(b) - set(a)), "max_abs_diff": max((r["max_abs_diff"] for r in rows), default=None)}


def to_markdown(result: dict) -> str:
  lines = ["| cell | test NDCG@10 before | after | best step before / after | max abs diff (4 test metrics) | "
           "hook sections: leaves, max abs diff |", "|---|---:|---:|---|---:|---|"]
  for r in result["rows"]:
    hooks = "; ".join(f"{n}: {h['leaves']}, {h['max_abs_diff']:.1e}" + (" MISMATCH" if h["values_differing"] or
                      h["missing_after"] or h["extra_after"] else "") for n, h in r["hook_sections"].items())
    lines.append(f"| {r['key']} | {r['before']['ndcg@10']:.6f} | {r['after']['ndcg@10']:.6f} | "
                 f"{r['best_step'][0]} / {r['best_step'][1]} | {r['max_abs_diff']:.2e} | {hooks or '-'} |")
  for side in ("only_before", "only_after"):
    for key in result[side]:
      lines.append(f"| {key} | {'(ran)' if side == 'only_before' else '-'} | {'(ran)' if side == 'only_after' else '-'} "
                   f"| | {side.replace('_', ' ')} | |")
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("before")
  p.add_argument("after")
  p.add_argument("--out", default="")
  args = p.parse_args()
  result = compare(args.before, args.after)
  print(to_markdown(result))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
