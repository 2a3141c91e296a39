"""Prints the statistics of a dataset (preparing it first if needed).

  python -m xrec.data.stats --config configs/ml1m_cross_region.py [--config.data.preprocess.user_core=5]

Users, items, interactions, density and sequence-length percentiles per domain,
the preprocessing counts, the overlaps between domains (by raw key), the
scenario split report and any skipped malformed lines. The same numbers are
saved with the prepared dataset (metadata.json, key "statistics").
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

_STEPS = (("interactions_read", "read"), ("after_min_rating", "min_rating"), ("after_dedup", "dedup"),
          ("after_core_filter", "k-core"), ("after_max_seq_len", "max_seq_len"))


def format_statistics(stats: dict, title: str = "") -> str:
  """Human-readable report of `builder.info.metadata['statistics']` (synthetic or real datasets)."""
  lines = [title] if title else []
  header = (f"{'domain':<10} {'users':>9} {'items':>9} {'interactions':>13} {'density':>9}  "
            "seq_len min/p5/p25/p50/p75/p95/max (mean)")
  lines.append(header)
  for name, d in stats.get("domains", {}).items():
    users, items, inter = d.get("users", 0), d.get("items", 0), d.get("interactions", 0)
    density = d.get("density", inter / (users * items) if users and items else 0.0)
    pct = d.get("seq_len_p5_p25_p50_p75_p95")
    lens = (f"{d['seq_len_min']}/" + "/".join(f"{p:g}" for p in pct) + f"/{d['seq_len_max']} "
            f"({d['seq_len_mean']:.1f})") if pct else "-"
    lines.append(f"{name:<10} {users:>9,} {items:>9,} {inter:>13,} {density:>9.5f}  {lens}")
  for name, d in stats.get("domains", {}).items():
    pre = d.get("preprocess")
    if pre:
      chain = " -> ".join(f"{label} {pre[key]:,}" for key, label in _STEPS if key in pre)
      lines.append(f"preprocessing {name}: {chain} interactions "
                   f"(duplicates dropped {pre.get('duplicates_dropped', 0):,}, k-core iterations "
                   f"{pre.get('core_filter_iterations', 0)}, users dropped {pre.get('users_dropped', 0):,})")
      repeats = (pre.get("valid_targets_repeating_input", 0), pre.get("test_targets_repeating_input", 0))
      if any(repeats):
        lines.append(f"  warning: the valid / test target of {repeats[0]:,} / {repeats[1]:,} users repeats the "
                     "item right before it (the model reads its answer as its last input; "
                     "data.preprocess.dedup=consecutive drops such repeats)")
  for pair, o in stats.get("overlap", {}).items():
    lines.append(f"overlap {pair}: shared users {o['shared_users']:,}, shared items {o['shared_items']:,}")
  scenario = {k: v for k, v in stats.get("scenario", {}).items() if k not in ("overlap", "skipped_lines")}
  if scenario:
    lines.append("scenario: " + json.dumps(scenario, sort_keys=True))
  for path, s in stats.get("scenario", {}).get("skipped_lines", {}).items():
    lines.append(f"skipped {s['count']:,} malformed lines in {path}, e.g. " + "; ".join(s["examples"][:3]))
  return "\n".join(lines)


def main(argv):
  del argv
  from xrec.data import pipeline
  builder = pipeline.prepare_builder(flags.FLAGS.config.data)
  title = f"{builder.name}/{builder.builder_config.name} ({builder.data_dir})"
  print(format_statistics(dict(builder.info.metadata)["statistics"], title), flush=True)


if __name__ == "__main__":
  config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py[:arg]).", lock_config=True)
  flags.mark_flags_as_required(["config"])
  app.run(main)
