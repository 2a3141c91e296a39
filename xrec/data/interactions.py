"""The in-memory interaction table every real source is parsed into.

A source (a MovieLens release, an interaction file) becomes one
`InteractionTable`: one row per interaction, in file order, with users and
items as integer codes into lists of raw keys (codes assigned in order of first
appearance), plus the user and item features the source has. Preprocessing and
scenario splits work on tables; `DomainData` is what a builder writes.
"""

from __future__ import annotations

import array
import dataclasses
import math
import re

import numpy as np


class MalformedLineError(ValueError):
  """A line of an input file that cannot be parsed; the message names file:line."""


def malformed(path, line_no: int, reason: str, line: str = "", skippable: bool = False) -> MalformedLineError:
  shown = line if len(line) <= 200 else line[:200] + "..."
  hint = " (set data.files.on_malformed='skip' to skip and count such lines)" if skippable else ""
  return MalformedLineError(f"{path}:{line_no}: {reason}: {shown!r}{hint}")


@dataclasses.dataclass
class InteractionTable:
  """Interactions of one source, in file order.

  users, items: int64 [n] codes into `user_keys` / `item_keys`
  ratings:      float64 [n] (NaN when the source has no ratings)
  timestamps:   int64 [n] seconds (0 when the source has no timestamps; file order is then the time order)
  user_features / item_features: raw key -> {feature name -> value} (only what the source has)
  skipped: input file -> {"count": lines skipped, "examples": first few "file:line: reason"}
  """

  name: str
  user_keys: list
  item_keys: list
  users: np.ndarray
  items: np.ndarray
  ratings: np.ndarray
  timestamps: np.ndarray
  has_ratings: bool
  has_timestamps: bool
  user_features: dict = dataclasses.field(default_factory=dict)
  item_features: dict = dataclasses.field(default_factory=dict)
  skipped: dict = dataclasses.field(default_factory=dict)

  def __len__(self) -> int:
    return len(self.users)

  def subset(self, mask: np.ndarray) -> "InteractionTable":
    """The rows where `mask` [n] is true (codes and key lists unchanged, file order kept)."""
    return dataclasses.replace(self, users=self.users[mask], items=self.items[mask],
                               ratings=self.ratings[mask], timestamps=self.timestamps[mask])


@dataclasses.dataclass
class DomainData:
  """One domain as written to its split: records aligned with `user_keys`.

  sequences:  list of int64 [len] 1-based ids into `item_keys` (chronological)
  timestamps: list of int64 [len] seconds, non-decreasing
  ratings:    list of float32 [len] (NaN where the source has no ratings)
  """

  user_keys: list
  item_keys: list
  sequences: list
  timestamps: list
  ratings: list
  user_features: dict = dataclasses.field(default_factory=dict)
  item_features: dict = dataclasses.field(default_factory=dict)
  report: dict = dataclasses.field(default_factory=dict)


class TableAccumulator:
  """Collects parsed rows (compact arrays, keys interned once) and builds the table."""

  def __init__(self, name: str):
    self.name = name
    self._user_code, self._item_code = {}, {}
    self._users, self._items = array.array("q"), array.array("q")
    self._ratings, self._timestamps = array.array("d"), array.array("q")
    self.skipped = {}

  def add(self, user: str, item: str, rating: float = math.nan, timestamp: int = 0):
    u = self._user_code.setdefault(user, len(self._user_code))
    i = self._item_code.setdefault(item, len(self._item_code))
    self._users.append(u)
    self._items.append(i)
    self._ratings.append(rating)
    self._timestamps.append(timestamp)

  def skip(self, path, line_no: int, reason: str):
    entry = self.skipped.setdefault(str(path), {"count": 0, "examples": []})
    entry["count"] += 1
    if len(entry["examples"]) < 5:
      entry["examples"].append(f"{path}:{line_no}: {reason}")

  def table(self, has_ratings: bool, has_timestamps: bool, user_features=None, item_features=None) -> InteractionTable:
    if not self._users:
      raise ValueError(f"{self.name}: no interactions were read")
    return InteractionTable(
        name=self.name, user_keys=list(self._user_code), item_keys=list(self._item_code),
        users=np.frombuffer(self._users, np.int64).copy(), items=np.frombuffer(self._items, np.int64).copy(),
        ratings=np.frombuffer(self._ratings, np.float64).copy(),
        timestamps=np.frombuffer(self._timestamps, np.int64).copy(),
        has_ratings=has_ratings, has_timestamps=has_timestamps,
        user_features=user_features or {}, item_features=item_features or {}, skipped=self.skipped)


_INT_KEY = re.compile(r"^-?\d+$")


def key_order(keys) -> list:
  """Indices of `keys` in vocabulary order: numeric when every key is an integer (or one file's
  namespaced integer, `Beauty.txt:12`), else as given.

  Numeric order keeps the original ids of SASRec-style files as the item ids
  when nothing is filtered; otherwise the order of first appearance is kept.
  """
  keys = list(keys)
  if not keys:
    return []
  prefix = keys[0].rpartition(":")[0] + ":" if ":" in keys[0] else ""
  if all(k.startswith(prefix) and _INT_KEY.match(k[len(prefix):]) for k in keys):
    return sorted(range(len(keys)), key=lambda i: int(keys[i][len(prefix):]))
  return list(range(len(keys)))
