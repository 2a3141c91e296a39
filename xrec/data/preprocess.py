"""Preprocessing of an interaction table into one domain's chronological user sequences.

Steps, in this order (each counted in the report):
  1. min_rating:  keep interactions with rating >= min_rating (implicit positives); 0 = keep all
  2. sort:        per user by timestamp, stable: ties keep file order
  3. dedup:       none | first | last (keep the earliest / latest interaction of each (user, item) pair)
                  | consecutive (drop an item repeated right after itself)
  4. k-core:      drop users with < max(user_core, min_seq_len) and items with < item_core interactions,
                  repeated until nothing changes (a fixed point: every kept user and item meets both)
  5. max_seq_len: keep each user's most recent max_seq_len interactions (0 = all); done last, so
                  it never drops a user, and items seen only in cut prefixes leave the vocabulary

min_seq_len defaults to 3: leave-one-out needs a train, a valid and a test item.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from xrec.data.interactions import DomainData, InteractionTable, key_order

DEDUP = ("none", "first", "last", "consecutive")


@dataclasses.dataclass(frozen=True)
class PreprocessSpec:
  min_rating: float = 0.0
  dedup: str = "none"
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
    repeat = np.zeros(len(rows), bool)
    repeat[1:] = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
    rows = rows[~repeat]
  report["after_dedup"] = int(len(rows))

  user_min = max(spec.user_core, spec.min_seq_len)
  alive = np.ones(len(rows), bool)
  iterations = 0
  while True:
    u, i = table.users[rows[alive]], table.items[rows[alive]]
    u_count = np.bincount(u, minlength=len(table.user_keys))
    i_count = np.bincount(i, minlength=len(table.item_keys))
    bad = (u_count[table.users[rows]] < user_min) | (i_count[table.items[rows]] < spec.item_core)
    bad &= alive
    if not bad.any():
      break
    alive &= ~bad
    iterations += 1
  rows = rows[alive]
  report["after_core_filter"] = int(len(rows))
  report["core_filter_iterations"] = iterations

  users = table.users[rows]
  starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(rows) else np.zeros(0, np.int64)
  groups = np.split(rows, starts[1:]) if len(rows) else []
  if spec.max_seq_len:
    groups = [g[-spec.max_seq_len:] for g in groups]
  report["after_max_seq_len"] = int(sum(len(g) for g in groups))
  return to_domain(table, groups, report)


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
