"""Preprocessing: rating threshold, dedup, stable chronological sort, k-core fixed point, lengths."""

import collections

import numpy as np
import pytest

from xrec.data.interactions import TableAccumulator
from xrec.data.preprocess import PreprocessSpec, preprocess


def table(rows, ratings=True, timestamps=True):
  """rows: (user, item, rating, ts) in file order."""
  acc = TableAccumulator("t")
  for u, i, r, ts in rows:
    acc.add(u, i, r, ts)
  return acc.table(ratings, timestamps)


def sequences(domain):
  """{user: [item keys]} of a DomainData."""
  return {u: [domain.item_keys[i - 1] for i in seq] for u, seq in zip(domain.user_keys, domain.sequences)}


def test_threshold_keeps_ratings_at_or_above():
  t = table([("u", "a", 5, 1), ("u", "b", 3, 2), ("u", "c", 4, 3), ("u", "d", 4.5, 4), ("u", "e", 1, 5)])
  d = preprocess(t, PreprocessSpec(min_rating=4.0))
  assert sequences(d) == {"u": ["a", "c", "d"]}
  assert d.report["after_min_rating"] == 3 and d.ratings[0].tolist() == [5.0, 4.0, 4.5]
  no_ratings = table([("u", "a", np.nan, 0)] * 3, ratings=False)
  with pytest.raises(ValueError, match="min_rating=4.0 needs ratings, and this source has none"):
    preprocess(no_ratings, PreprocessSpec(min_rating=4.0))


def test_sort_is_chronological_and_stable_on_ties():
  # file order: b and a tie at 20 (b first in the file), c earlier, d later
  t = table([("u", "b", 1, 20), ("u", "a", 1, 20), ("u", "c", 1, 10), ("u", "d", 1, 30), ("v", "x", 1, 5),
             ("v", "y", 1, 5), ("v", "z", 1, 5)])
  d = preprocess(t, PreprocessSpec())
  assert sequences(d) == {"u": ["c", "b", "a", "d"], "v": ["x", "y", "z"]}
  assert all(np.all(np.diff(ts) >= 0) for ts in d.timestamps)
  assert d.timestamps[0].tolist() == [10, 20, 20, 30]


@pytest.mark.parametrize("mode,expected", [
    ("keep", ["a", "b", "a", "a", "c", "b"]),
    ("first", ["a", "b", "c"]),
    ("last", ["a", "c", "b"]),
    ("consecutive", ["a", "b", "a", "c", "b"]),
])
def test_dedup_modes(mode, expected):
  t = table([("u", k, 1, ts) for ts, k in enumerate(["a", "b", "a", "a", "c", "b"])])
  d = preprocess(t, PreprocessSpec(dedup=mode))
  assert sequences(d)["u"] == expected
  assert d.report["after_dedup"] == len(expected)


def test_k_core_iterates_to_a_fixed_point():
  # item_core=2: dropping d leaves w with one item, dropping w leaves c once, dropping c shortens u
  rows = [("u", "a"), ("u", "b"), ("u", "c"), ("v", "a"), ("v", "b"), ("w", "c"), ("w", "d")]
  t = table([(u, i, 1, ts) for ts, (u, i) in enumerate(rows)])
  d = preprocess(t, PreprocessSpec(item_core=2, min_seq_len=2))
  assert sequences(d) == {"u": ["a", "b"], "v": ["a", "b"]}
  assert d.report["core_filter_iterations"] == 3 and d.report["users_dropped"] == 1


def naive_core(rows, user_min, item_min):
  rows = list(rows)
  while True:
    uc = collections.Counter(u for u, _ in rows)
    ic = collections.Counter(i for _, i in rows)
    kept = [(u, i) for u, i in rows if uc[u] >= user_min and ic[i] >= item_min]
    if kept == rows:
      return rows
    rows = kept


def test_k_core_matches_a_naive_fixed_point_on_random_data():
  rng = np.random.default_rng(0)
  rows = [(f"u{rng.integers(100)}", f"i{int(rng.zipf(1.3)) % 80}") for _ in range(700)]
  t = table([(u, i, 1, ts) for ts, (u, i) in enumerate(rows)])
  d = preprocess(t, PreprocessSpec(user_core=5, item_core=5, dedup="keep"))
  got = sorted((u, d.item_keys[i - 1]) for u, seq in zip(d.user_keys, d.sequences) for i in seq)
  assert got == sorted(naive_core(rows, 5, 5)) and d.report["core_filter_iterations"] >= 2
  counts = collections.Counter(k for _, k in got)
  assert min(counts.values()) >= 5 and min(len(s) for s in d.sequences) >= 5


def test_min_and_max_sequence_length_and_vocabulary():
  rows = [("2", "30", 1, 1), ("2", "4", 1, 2), ("1", "10", 1, 1), ("1", "20", 1, 2), ("1", "4", 1, 3),
          ("1", "30", 1, 4), ("1", "5", 1, 5), ("3", "4", 1, 1), ("3", "5", 1, 2), ("3", "30", 1, 3)]
  d = preprocess(table(rows), PreprocessSpec())  # min_seq_len=3 by default: user 2 (2 items) is dropped
  assert d.user_keys == ["1", "3"] and d.report["users_dropped"] == 1
  assert d.item_keys == ["4", "5", "10", "20", "30"]  # integer keys in numeric order
  assert d.sequences[0].tolist() == [3, 4, 1, 5, 2]  # 1-based ids
  d = preprocess(table(rows), PreprocessSpec(max_seq_len=3))
  assert sequences(d) == {"1": ["4", "30", "5"], "3": ["4", "5", "30"]}  # the most recent 3
  assert d.item_keys == ["4", "5", "30"]  # items only in the cut prefix leave the vocabulary
  with pytest.raises(ValueError, match=r"dedup='all' is not valid; valid: \[.consecutive., .first., .last., .keep."):
    PreprocessSpec(dedup="all")
  with pytest.raises(ValueError, match="max_seq_len=2 is below min_seq_len=3"):
    PreprocessSpec(max_seq_len=2)
