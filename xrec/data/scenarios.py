"""Declarative scenario splits of real sources into domains (raw user and item keys kept).

`config.data.scenario.kind`:
  none            one domain, split `main`: the whole source after preprocessing
  user_attribute  users split by a user attribute (source / target: disjoint users, shared items), e.g.
                  cross-region on MovieLens: attribute='region' = first digit of the zip code (US
                  region 0 New England ... 9 Pacific); zips not starting with a digit (Canadian and
                  other non-US codes, e.g. 'T8H1N') have region 'non_us', empty ones 'unknown'
  item_attribute  items split by an item attribute (source / target: disjoint items; a user appears in
                  both, with the sequence restricted to each side), e.g. cross-genre on 'genres'
  cross_app       two sources paired as source (data.name) and target (scenario.target_name): users
                  and items matched by raw key, overlap reported (zero allowed)

Values: `source_values` go to the source domain; `target_values` to the target, empty = every value
not in `source_values` (for users, except 'unknown' and 'non_us', which go to a side only when listed).
Users / items whose value is on neither side are dropped and counted.

Multi-valued item attributes (a movie with several genres): an item whose values all lie on one
side goes there; an item with values on both sides follows `multi_value_rule`:
  drop    in neither domain (default: the cleanest split, counted in the report)
  first   the side of its first listed value that is on a side (genre order in the file)
  source / target   always that side

Preprocessing (xrec/data/preprocess.py) runs per domain after the split, so the k-core and the
minimum length hold within each domain.
"""

from __future__ import annotations

import collections
import os

import numpy as np

from xrec.data import builders, formats, movielens
from xrec.data.interactions import DomainData, InteractionTable
from xrec.data.preprocess import PreprocessSpec, preprocess

KINDS = ("none", "user_attribute", "item_attribute", "cross_app")
MULTI_VALUE_RULES = ("drop", "first", "source", "target")
SOURCE_NAMES = ("movielens", "interactions")
SINGLE_DOMAIN = "main"  # TFDS reserves the split name 'all'


def us_region(zip_code) -> str:
  """'0'-'9' (first digit of a US zip code = region), 'non_us' (starts with a letter), 'unknown' (empty)."""
  z = str(zip_code or "").strip()
  if not z:
    return "unknown"
  return z[0] if z[0].isdigit() else "non_us"


# Attributes computed from a user feature: name -> (feature it needs, function).
DERIVED_USER_ATTRIBUTES = {"region": ("zip", us_region)}


def read_source(source: dict, runtime: dict) -> InteractionTable:
  """One source from its options: {'name': 'movielens', 'release': ...} or {'name': 'interactions', ...files}."""
  name = source["name"]
  if name == "movielens":
    return movielens.read_movielens(source["release"], runtime["manual_dir"], runtime.get("download", True),
                                    runtime.get("verify_checksum", True))
  if name == "interactions":
    return formats.read_interactions(source, name=f"{source['format']}:{source['path']}")
  raise ValueError(f"Unknown source {name!r}; valid: {list(SOURCE_NAMES)}")


def key_scope(source: dict) -> str:
  """How a source's keys meet another source's: "per file (NAME)" or "raw ids"."""
  if source["name"] == "movielens":
    return "raw ids (MovieLens)"
  namespace = formats.key_namespace(source)
  return f"per file ({namespace}: no key matches another file)" if namespace else "raw ids"


def check_distinct_namespaces(source: dict, target: dict) -> None:
  """Per-file keys are made from a file's name: two different files of the same name (books/ratings.txt,
  movies/ratings.txt) would share every key, the overlap of per-file numbering this prevents."""
  if source["name"] == "movielens" or target["name"] == "movielens":
    return
  names = [formats.key_namespace(side) for side in (source, target)]
  paths = [os.path.realpath(str(side.get("path", ""))) for side in (source, target)]
  if names[0] and names[0] == names[1] and paths[0] != paths[1]:
    raise ValueError(f"the source and target files are both named {names[0]!r} ({paths[0]}, {paths[1]}) and keep "
                     "per-file keys, which are made from the file's name: every user and item key of one would "
                     "match the other's; rename one file, or declare a shared numbering "
                     "(data.files.key_scope=shared and data.scenario.target_files.key_scope=shared)")


def _values(values) -> set:
  return {str(v) for v in (values or ())}


def user_sides(table: InteractionTable, attribute: str, source_values: set, target_values: set):
  """Per user code: 'source' | 'target' | None, and the count of users per attribute value."""
  feature, fn = DERIVED_USER_ATTRIBUTES.get(attribute, (attribute, lambda v: "unknown" if v is None else str(v)))
  have = {k for f in table.user_features.values() for k in f}
  if feature not in have:
    raise ValueError(f"{table.name}: user attribute {attribute!r} needs the user feature {feature!r}; this source "
                     f"has user features {sorted(have)} (derived: {sorted(DERIVED_USER_ATTRIBUTES)})")
  sides, counts = [], collections.Counter()
  for key in table.user_keys:
    value = fn(table.user_features.get(key, {}).get(feature))
    counts[value] += 1
    if value in source_values:
      sides.append("source")
    elif (value in target_values) if target_values else value not in ("unknown", "non_us"):
      sides.append("target")
    else:
      sides.append(None)
  return sides, counts


def item_sides(table: InteractionTable, attribute: str, source_values: set, target_values: set, rule: str):
  """Per item code: 'source' | 'target' | None, and a report of how items were assigned."""
  if rule not in MULTI_VALUE_RULES:
    raise ValueError(f"data.scenario.multi_value_rule={rule!r} is not valid; valid: {list(MULTI_VALUE_RULES)}")
  have = {k for f in table.item_features.values() for k in f}
  if attribute not in have:
    raise ValueError(f"{table.name}: item attribute {attribute!r} not found; this source has item features "
                     f"{sorted(have)} (add an item-attribute file via data.files.item_attributes_path)")
  report = collections.Counter()
  sides = []
  for key in table.item_keys:
    value = table.item_features.get(key, {}).get(attribute)
    values = [str(v) for v in (value if isinstance(value, (list, tuple)) else [] if value in (None, "") else [value])]
    per_value = []
    for v in values:
      if v in source_values:
        per_value.append("source")
      elif (v in target_values) if target_values else True:
        per_value.append("target")
    kinds = set(per_value)
    if not kinds:
      sides.append(None)
      report["items_without_side"] += 1
    elif len(kinds) == 1:
      sides.append(per_value[0])
      report[f"items_{per_value[0]}"] += 1
    else:
      report["items_on_both_sides"] += 1
      side = {"drop": None, "first": per_value[0], "source": "source", "target": "target"}[rule]
      sides.append(side)
      report[f"items_{side}" if side else "items_dropped_multi_value"] += 1
  return sides, dict(report)


def build_domains(options: dict, runtime: dict) -> tuple[dict, dict]:
  """Reads the source(s), splits them by `options['scenario']`, preprocesses each domain.

  Returns ({domain name: DomainData}, scenario report).
  """
  spec = PreprocessSpec(**options["preprocess"])
  scenario = options["scenario"]
  kind = scenario["kind"]
  if kind not in KINDS:
    raise ValueError(f"data.scenario.kind={kind!r} is not valid; valid: {list(KINDS)}")
  table = read_source(options["source"], runtime)
  report = {"kind": kind, "skipped_lines": dict(table.skipped)}
  src_values, tgt_values = _values(scenario.get("source_values")), _values(scenario.get("target_values"))
  if kind in ("user_attribute", "item_attribute") and not src_values:
    raise ValueError(f"data.scenario.source_values is empty; a {kind} split needs the attribute values of the "
                     "source domain")
  if kind == "none":
    return {SINGLE_DOMAIN: preprocess(table, spec)}, report
  if kind == "user_attribute":
    sides, counts = user_sides(table, scenario["attribute"], src_values, tgt_values)
    sides = np.array([{"source": 1, "target": 2, None: 0}[s] for s in sides], np.int8)
    row_side = sides[table.users] if len(sides) else np.zeros(0, np.int8)
    report.update(attribute=scenario["attribute"], users_per_value=dict(sorted(counts.items())),
                  users_without_side=int((sides == 0).sum()))
  elif kind == "item_attribute":
    sides, assigned = item_sides(table, scenario["attribute"], src_values, tgt_values,
                                 scenario.get("multi_value_rule", "drop"))
    sides = np.array([{"source": 1, "target": 2, None: 0}[s] for s in sides], np.int8)
    row_side = sides[table.items]
    report.update(attribute=scenario["attribute"], multi_value_rule=scenario.get("multi_value_rule", "drop"),
                  **assigned)
  else:
    check_distinct_namespaces(options["source"], options["target"])
    target = read_source(options["target"], runtime)
    report["skipped_lines"].update(target.skipped)
    # how users and items were matched between the two sources (overlap below is by these keys)
    report["keys"] = {side: key_scope(opts) for side, opts in (("source", options["source"]),
                                                                ("target", options["target"]))}
    domains = {"source": preprocess(table, spec), "target": preprocess(target, spec)}
    report["overlap"] = builders.overlap_statistics(domains)
    return domains, report
  report["interactions_without_side"] = int((row_side == 0).sum())
  domains = {"source": preprocess(table.subset(row_side == 1), spec),
             "target": preprocess(table.subset(row_side == 2), spec)}
  for name, d in domains.items():
    if not d.user_keys:
      raise ValueError(f"Scenario {kind} on {scenario['attribute']!r}: the {name} domain is empty after "
                       f"preprocessing ({d.report}); check data.scenario.{name}_values")
  report["overlap"] = builders.overlap_statistics(domains)
  return domains, report


def domain_statistics(domain: DomainData) -> dict:
  """builders.domain_statistics plus items, density and the preprocessing counts."""
  stats = builders.domain_statistics(domain.sequences)
  n_users, n_items = len(domain.user_keys), len(domain.item_keys)
  stats["items"] = n_items
  stats["density"] = stats.get("interactions", 0) / (n_users * n_items) if n_users and n_items else 0.0
  stats["preprocess"] = domain.report
  return stats
