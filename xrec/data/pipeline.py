"""Sequence datasets -> leave-one-out splits -> grain batches.

Protocol (chronological leave-one-out, per user, sequence s of length n >= 3):
  train: inputs s[:-3] -> targets s[1:-2]  (every position predicts the next item)
  valid: history s[:-2] -> target s[-2]
  test:  history s[:-1] -> target s[-1]
Inputs are the last `max_len` items, right-aligned (left-padded with 0), so
the most recent item always sits at position max_len - 1.

Few-shot subsets keep a fraction of users, nested across fractions: users are
ranked once by a seeded hash of their raw key and a fraction f keeps the first
round(f * n) of that ranking, so the 5% users are inside the 10% users.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os

import grain
import numpy as np

from xrec.data import builders

SPLITS = ("train", "valid", "test")


@dataclasses.dataclass
class DomainSequences:
  """One domain's user sequences, checked and indexed (read once from the data source)."""

  name: str
  source: object  # random-access data source: source[i] -> record dict
  item_keys: list[str]
  user_keys: list[str]  # for the selected users, aligned with `indices`
  indices: np.ndarray  # int64 [users]: record index in `source` per selected user
  lengths: np.ndarray  # int64 [users]
  metadata: dict

  @property
  def num_items(self) -> int:
    return len(self.item_keys)

  @property
  def num_users(self) -> int:
    return len(self.indices)

  def sequence(self, u: int) -> np.ndarray:
    return np.asarray(self.source[int(self.indices[u])]["items"], np.int64)


def few_shot_order(user_keys, seed: int) -> np.ndarray:
  """Permutation of users by a seeded hash of their raw keys (nested few-shot subsets)."""
  def prio(key):
    return hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8]
  return np.array(sorted(range(len(user_keys)), key=lambda i: prio(user_keys[i])), np.int64)


def select_fraction(num_users: int, user_keys, fraction: float, seed: int) -> np.ndarray:
  """Sorted indices of the users kept by a few-shot `fraction` (nested in the fraction)."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f"user_fraction must be in (0, 1], got {fraction}")
  if fraction == 1.0:
    return np.arange(num_users)
  keep = max(1, int(round(fraction * num_users)))
  return np.sort(few_shot_order(user_keys, seed)[:keep])


def prepare_builder(data_cfg):
  """Builds (or reuses) the TFDS dataset named by `data_cfg`; returns the builder."""
  data_dir = data_cfg.get("data_dir") or os.environ.get("XREC_DATA_DIR") or builders.DEFAULT_DATA_DIR
  if data_cfg.name == "synthetic":
    knobs = dict(data_cfg.synthetic)
    scenario = knobs.pop("scenario")
    config = builders.synthetic_config(scenario, **knobs)
    builder = builders.SyntheticXdomain(config=config, data_dir=data_dir)
  elif data_cfg.name in ("movielens", "interactions"):
    from xrec.data import prepared  # real sources: MovieLens archives, interaction files, scenario splits
    builder = prepared.make_builder(data_cfg)
  else:
    raise ValueError(f"Unknown dataset {data_cfg.name!r}; valid: ['synthetic', 'movielens', 'interactions']")
  builder.download_and_prepare(file_format="array_record")
  return builder


def load_domain(data_cfg) -> DomainSequences:
  """Prepares the dataset and returns the checked, few-shot-filtered domain."""
  builder = prepare_builder(data_cfg)
  sources = builder.as_data_source()
  if data_cfg.domain not in sources:
    raise ValueError(f"Unknown domain {data_cfg.domain!r} in {builder.name}; valid: {sorted(sources)}")
  source = sources[data_cfg.domain]
  item_keys = list(builder.info.metadata["item_keys"][data_cfg.domain])
  return index_domain(data_cfg.domain, source, item_keys, data_cfg.user_fraction, data_cfg.fraction_seed,
                      metadata=dict(builder.info.metadata))


def index_domain(name, source, item_keys, user_fraction=1.0, fraction_seed=0, metadata=None) -> DomainSequences:
  """One pass over `source`: validates every sequence and selects the few-shot users."""
  n_items = len(item_keys)
  user_keys, lengths = [], []
  for i in range(len(source)):
    rec = source[i]
    items = np.asarray(rec["items"])
    key = rec["user_key"]
    key = key.decode() if isinstance(key, bytes) else str(key)
    if items.size == 0:
      raise ValueError(f"Domain {name!r}: user {key!r} (record {i}) has an empty sequence")
    if items.size < 3:
      raise ValueError(
          f"Domain {name!r}: user {key!r} has {items.size} interactions; leave-one-out needs >= 3 "
          "(train, valid, test). Filter short users when preparing the dataset.")
    if items.min() < 1 or items.max() > n_items:
      raise ValueError(
          f"Domain {name!r}: user {key!r} has item ids in [{items.min()}, {items.max()}], outside the "
          f"valid range [1, {n_items}] of the item vocabulary (0 is padding)")
    user_keys.append(key)
    lengths.append(items.size)
  if not user_keys:
    raise ValueError(f"Domain {name!r} has no users")
  keep = select_fraction(len(user_keys), user_keys, user_fraction, fraction_seed)
  return DomainSequences(
      name=name, source=source, item_keys=item_keys,
      user_keys=[user_keys[i] for i in keep], indices=keep.astype(np.int64),
      lengths=np.asarray(lengths, np.int64)[keep], metadata=metadata or {})


def right_align(seq: np.ndarray, max_len: int) -> np.ndarray:
  out = np.zeros(max_len, np.int32)
  tail = seq[-max_len:]
  if len(tail):
    out[max_len - len(tail):] = tail
  return out


def train_example(seq: np.ndarray, max_len: int) -> dict:
  """Training window of one user: every position predicts the next item."""
  train = seq[:-2][-(max_len + 1):]
  return {"inputs": right_align(train[:-1], max_len), "targets": right_align(train[1:], max_len)}


def eval_example(seq: np.ndarray, split: str, max_len: int, max_history: int) -> dict:
  cut = {"valid": -2, "test": -1}[split]
  history = seq[:cut]
  return {
      "inputs": right_align(history, max_len),
      "target": np.int32(seq[cut]),
      "history": right_align(history, max_history),  # every earlier item, for masking
      "weight": np.float32(1.0),
  }


def _stack(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


class TrainBatches:
  """Deterministic training batches: batch `step` is a pure function of (seed, step).

  Each epoch is a fresh seeded permutation of the training users; batches may
  straddle epochs. Resuming at step s reads exactly the batches an
  uninterrupted run would have read from s on.
  """

  def __init__(self, domain: DomainSequences, batch_size: int, max_len: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    # users with fewer than 4 interactions have no (input, next) pair before valid/test
    self.users = np.flatnonzero(domain.lengths >= 4)
    if len(self.users) == 0:
      raise ValueError(f"Domain {domain.name!r}: no user has >= 4 interactions, nothing to train on")
    if batch_size % process_count:
      raise ValueError(f"batch_size {batch_size} not divisible by process count {process_count}")
    self.domain, self.batch_size, self.max_len, self.seed = domain, batch_size, max_len, seed
    self.local = slice(process_index * batch_size // process_count,
                       (process_index + 1) * batch_size // process_count)
    self._perms = {}

  @property
  def steps_per_epoch(self) -> float:
    return len(self.users) / self.batch_size

  def _user(self, position: int) -> int:
    epoch, i = divmod(position, len(self.users))
    if epoch not in self._perms:
      self._perms = {epoch: np.random.default_rng([self.seed, epoch]).permutation(self.users)}
    return int(self._perms[epoch][i])

  def batch(self, step: int) -> dict:
    start = step * self.batch_size
    rows = range(start + self.local.start, start + self.local.stop)
    return _stack([train_example(self.domain.sequence(self._user(p)), self.max_len) for p in rows])

  def iterate(self, start_step: int, num_steps: int, prefetch: int = 4):
    """grain pipeline over steps [start_step, num_steps), prepared ahead in threads."""
    ds = grain.MapDataset.range(start_step, num_steps).map(self.batch)
    opts = grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(opts))


def max_history_len(domain: DomainSequences, multiple: int = 64) -> int:
  longest = int(domain.lengths.max()) - 1
  return max(multiple, -(-longest // multiple) * multiple)


def eval_batches(domain: DomainSequences, split: str, batch_size: int, max_len: int,
                 process_index: int = 0, process_count: int = 1, prefetch: int = 4):
  """Every selected user once, in fixed order, last batch padded with weight-0 rows."""
  if split not in ("valid", "test"):
    raise ValueError(f"Unknown eval split {split!r}; valid: ['valid', 'test']")
  max_history = max_history_len(domain)
  num_batches = -(-domain.num_users // batch_size)
  lo, hi = process_index * batch_size // process_count, (process_index + 1) * batch_size // process_count

  def make(b):
    rows = []
    for u in range(b * batch_size + lo, b * batch_size + hi):
      if u < domain.num_users:
        rows.append(eval_example(domain.sequence(u), split, max_len, max_history))
      else:  # padding row: scored but weighted out
        pad = eval_example(np.array([1, 1, 1], np.int64), split, max_len, max_history)
        rows.append({**pad, "weight": np.float32(0.0)})
    return _stack(rows)

  ds = grain.MapDataset.range(num_batches).map(make)
  return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=prefetch)))


def item_counts(domain: DomainSequences, split: str = "train") -> np.ndarray:
  """Interaction counts per item id [num_items + 1] over the part of each sequence before `split`."""
  cut = {"train": -2, "valid": -2, "test": -1}[split]
  counts = np.zeros(domain.num_items + 1, np.int64)
  for u in range(domain.num_users):
    np.add.at(counts, domain.sequence(u)[:cut], 1)
  return counts
