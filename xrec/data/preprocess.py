"""Preprocessing of an interaction table into one domain's chronological user sequences.

Steps, in this order (each counted in the report):
  1. min_rating:  keep interactions with rating >= min_rating (implicit positives); 0 = keep all
  2. sort:        per user by timestamp, stable: ties keep file order
  3. dedup:       consecutive (default: drop an interaction that repeats the user's previous item, as a
                  row written twice does) | first | last (keep the earliest / latest interaction of
                  each (user, item) pair) | keep (every row, repeats included)
  4. k-core:      drop users with < max(user_core, min_seq_len) and items with < item_core interactions,
                  repeated until nothing changes (a fixed point: every kept user and item meets both)
  5. max_seq_len: keep each user's most recent max_seq_len interactions (0 = all); done last, so
                  it never drops a user, and items seen only in cut prefixes leave the vocabulary

min_seq_len defaults to 3: leave-one-out needs a train, a valid and a test item.

Why consecutive by default: real exports repeat rows, and a row written twice hands the model its
leave-one-out target as its last input (the test target equals the item before it), which scores
near-perfect test metrics. Dropped rows are counted (`duplicates_dropped`) and logged with the
source's name; under `keep`, the users whose valid or test target repeats the item before it are
counted (`valid_targets_repeating_input`, `test_targets_repeating_input`) and logged.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from xrec.data.interactions import DomainData, InteractionTable, key_order

log = logging.getLogger("xrec")
DEDUP = ("consecutive", "first", "last", "keep")


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
  min_rating: float = 0.0
  dedup: str = "consecutive"
  user_core: int = 0
  item_core: int = 0
  min_seq_len: int = 3
  max_seq_len: int = 0

  def __post_init__(self):
    if self.dedup not in DEDUP:
      raise ValueError(f"data.preprocess.dedup={self.dedup!r} is not valid; valid: {list(DEDUP)}")
    for name in ("user_core", "item_core", "max_seq_len"):
      if getattr(self, name) < 0:
        raise ValueError(f"data.preprocess.{name} must be >= 0, got {getattr(self, name)}")
    if self.min_seq_len < 1:
      raise ValueError(f"data.preprocess.min_seq_len must be >= 1, got {self.min_seq_len}")
    if self.max_seq_len and self.max_seq_len < self.min_seq_len:
      raise ValueError(f"data.preprocess.max_seq_len={self.max_seq_len} is below min_seq_len={self.min_seq_len}")


def preprocess(table: InteractionTable, spec: PreprocessSpec) -> DomainData:
  """Runs the steps above; returns the domain with 1-based item ids and a `report` of counts."""
  report = {"interactions_read": int(len(table))}
  keep = np.ones(len(table), bool)
  if spec.min_rating > 0:
    if not table.has_ratings:
      raise ValueError(f"{table.name}: data.preprocess.min_rating={spec.min_rating} needs ratings, and this "
                       "source has none (set min_rating=0 to keep every interaction)")
    keep &= table.ratings >= spec.min_rating
  report["after_min_rating"] = int(keep.sum())

  # chronological, stable: row index (file order) breaks timestamp ties
  rows = np.flatnonzero(keep)
  rows = rows[np.lexsort((rows, table.timestamps[rows], table.users[rows]))]
  users, items = table.users[rows], table.items[rows]

  if spec.dedup in ("first", "last"):
    pair = users * np.int64(len(table.item_keys)) + items
    if spec.dedup == "first":
      _, first = np.unique(pair, return_index=True)
    else:
      _, rev = np.unique(pair[::-1], return_index=True)
      first = len(pair) - 1 - rev
    rows = rows[np.sort(first)]
  elif spec.dedup == "consecutive":
    rows = rows[~_repeats(table, rows)]
  report["after_dedup"] = int(len(rows))
  report["duplicates_dropped"] = report["after_min_rating"] - report["after_dedup"]
  if report["duplicates_dropped"]:
    log.warning("%s: dropped %d duplicate interactions of %d (data.preprocess.dedup=%s%s)", table.name,
                report["duplicates_dropped"], report["after_min_rating"], spec.dedup,
                ": a user's item repeated right after itself" if spec.dedup == "consecutive" else "")

  user_min = max(spec.user_core, spec.min_seq_len)
  alive = np.ones(len(rows), bool)
  iterations, exposed = 0, 0
  while True:
    u, i = table.users[rows[alive]], table.items[rows[alive]]
    u_count = np.bincount(u, minlength=len(table.user_keys))
    i_count = np.bincount(i, minlength=len(table.item_keys))
    bad = (u_count[table.users[rows]] < user_min) | (i_count[table.items[rows]] < spec.item_core)
    bad &= alive
    if spec.dedup == "consecutive":  # dropping an item between two equal ones makes them a repeat
      live = np.flatnonzero(alive & ~bad)
      repeat = live[_repeats(table, rows[live])]
      bad[repeat] = True
      exposed += len(repeat)
    if not bad.any():
      break
    alive &= ~bad
    iterations += 1
  rows = rows[alive]
  report["after_core_filter"] = int(len(rows))
  report["core_filter_iterations"] = iterations
  report["repeats_after_core_filter"] = exposed  # consecutive: repeats the k-core made, dropped with it

  users = table.users[rows]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(rows) else np.zeros(0, np.int64)
  groups = np.split(rows, starts[1:]) if len(rows) else []
  if spec.max_seq_len:
    groups = [g[-spec.max_seq_len:] for g in groups]
  report["after_max_seq_len"] = int(sum(len(g) for g in groups))
  for split, cut in (("valid", -2), ("test", -1)):  # the target equals the last item the model reads
    report[f"{split}_targets_repeating_input"] = int(sum(
        len(g) >= 1 - cut and table.items[g[cut]] == table.items[g[cut - 1]] for g in groups))
  if report["test_targets_repeating_input"] or report["valid_targets_repeating_input"]:
    log.warning("%s: the test target of %d users and the valid target of %d repeat the item right before "
                "it, so the model is handed its answer as its last input (data.preprocess.dedup=%s; "
                "'consecutive' drops such repeats)", table.name, report["test_targets_repeating_input"],
                report["valid_targets_repeating_input"], spec.dedup)
  return to_domain(table, groups, report)


def _repeats(table: InteractionTable, rows: np.ndarray) -> np.ndarray:
  """bool [len(rows)]: the row repeats the item of the row before it, of the same user (rows in
  chronological order per user)."""
  users, items = table.users[rows], table.items[rows]
  repeat = np.zeros(len(rows), bool)
  repeat[1:] = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
  return repeat


def to_domain(table: InteractionTable, groups, report) -> DomainData:
  """Per-user row groups (chronological) -> DomainData with the domain's own item vocabulary."""
  user_codes = [int(table.users[g[0]]) for g in groups]
  order = key_order([table.user_keys[c] for c in user_codes])
  groups = [groups[k] for k in order]
  user_keys = [table.user_keys[user_codes[k]] for k in order]
  used = np.unique(np.concatenate([table.items[g] for g in groups])) if groups else np.zeros(0, np.int64)
  vocab_order = key_order([table.item_keys[c] for c in used])
  item_codes = used[vocab_order]
  item_keys = [table.item_keys[c] for c in item_codes]
  item_id = np.zeros(len(table.item_keys), np.int64)
  item_id[item_codes] = np.arange(1, len(item_codes) + 1)
  report = dict(report, users=len(user_keys), items=len(item_keys),
                users_dropped=len(np.unique(table.users)) - len(user_keys))
  return DomainData(
      user_keys=user_keys, item_keys=item_keys,
      sequences=[item_id[table.items[g]] for g in groups],
      timestamps=[table.timestamps[g].astype(np.int64) for g in groups],
      ratings=[table.ratings[g].astype(np.float32) for g in groups],
      user_features={k: table.user_features[k] for k in user_keys if k in table.user_features},
      item_features={k: table.item_features[k] for k in item_keys if k in table.item_features},
      report=report)
