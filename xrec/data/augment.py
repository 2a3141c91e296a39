"""Sequence augmentations for scarce target data (pure numpy; deterministic per (seed, step, row)).

Each operation maps a training sequence (item ids, oldest first, no padding) to a new one:

  crop        a random contiguous window of round(crop * n) items (CL4SRec)
  mask        round(mask * n) random positions replaced by `mask_id` (the encoder's [MASK] token,
              or 0 = a blank the encoders skip like padding) (CL4SRec)
  reorder     a random contiguous span of round(reorder * n) items shuffled (CL4SRec)
  substitute  round(substitute * n) random items replaced by the item that most often follows
              them in the training data (co-occurrence; CoSeRec-style)
  insert      round(insert * n) items get their most frequent successor inserted after them

`Augmenter.view(seq, key)` applies one operation drawn uniformly from `ops`; the randomness comes
from `key` only (the pipeline uses (seed, step, row, view)), so a batch is a pure function of
(seed, step) and a resumed run reads the same augmented batches.
"""

from __future__ import annotations

import dataclasses

import numpy as np

OPS = ("crop", "mask", "reorder", "substitute", "insert")


def successors(sequences, num_items: int) -> np.ndarray:
  """[num_items + 1] the most frequent next item of each item in `sequences` (itself when it is
  never followed; ties go to the smallest id). Id 0 maps to 0."""
  pairs = {}
  for seq in sequences:
    seq = np.asarray(seq, np.int64)
    if len(seq) > 1:
      keys = seq[:-1] * (num_items + 1) + seq[1:]
      ids, counts = np.unique(keys, return_counts=True)
      for k, c in zip(ids.tolist(), counts.tolist()):
        pairs[k] = pairs.get(k, 0) + c
  best = np.arange(num_items + 1, dtype=np.int64)
  score = np.zeros(num_items + 1, np.int64)
  for k in sorted(pairs):
    a, b = divmod(k, num_items + 1)
    if pairs[k] > score[a]:
      best[a], score[a] = b, pairs[k]
  return best


def _count(ratio: float, n: int) -> int:
  return int(min(n, max(1, round(ratio * n)))) if ratio > 0 else 0


@dataclasses.dataclass(frozen=True)
class Augmenter:
  ops: tuple[str, ...]
  crop: float = 0.6
  mask: float = 0.3
  reorder: float = 0.3
  substitute: float = 0.2
  insert: float = 0.2
  mask_id: int = 0
  successor: np.ndarray | None = None  # [num_items + 1], for substitute / insert

  def __post_init__(self):
    unknown = [op for op in self.ops if op not in OPS]
    if unknown:
      raise ValueError(f"Unknown data.augment.ops {unknown}; valid: {list(OPS)}")
    for name in ("crop", "mask", "reorder", "substitute", "insert"):
      value = getattr(self, name)
      if not 0.0 < value <= 1.0:
        raise ValueError(f"data.augment.{name}={value!r} must be in (0, 1]")
    if {"substitute", "insert"} & set(self.ops) and self.successor is None:
      raise ValueError("substitute / insert need item successors (augment.successors over the training data)")

  def apply(self, op: str, seq: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    seq = np.asarray(seq, np.int64)
    n = len(seq)
    if n < 2:
      return seq.copy()
    if op == "crop":
      k = _count(self.crop, n)
      start = int(rng.integers(0, n - k + 1))
      return seq[start:start + k].copy()
    if op == "mask":
      out = seq.copy()
      out[rng.choice(n, _count(self.mask, n), replace=False)] = self.mask_id
      return out
    if op == "reorder":
      k = _count(self.reorder, n)
      start = int(rng.integers(0, n - k + 1))
      out = seq.copy()
      out[start:start + k] = rng.permutation(out[start:start + k])
      return out
    if op == "substitute":
      out = seq.copy()
      where = rng.choice(n, _count(self.substitute, n), replace=False)
      out[where] = self.successor[out[where]]
      return out
    if op == "insert":
      where = set(rng.choice(n, _count(self.insert, n), replace=False).tolist())
      out = []
      for i, item in enumerate(seq.tolist()):
        out.append(item)
        if i in where:
          out.append(int(self.successor[item]))
      return np.asarray(out, np.int64)
    raise ValueError(f"Unknown augmentation {op!r}; valid: {list(OPS)}")

  def view(self, seq: np.ndarray, key) -> np.ndarray:
    """One augmented view of `seq`: an operation drawn from `ops`, all randomness from `key`."""
    rng = np.random.default_rng(key)
    op = self.ops[int(rng.integers(0, len(self.ops)))]
    return self.apply(op, seq, rng)


def from_config(augment_cfg, mask_id: int, training_sequences, num_items: int) -> Augmenter | None:
  """The run's Augmenter (None when data.augment.ops is empty)."""
  ops = tuple(augment_cfg.ops)
  if not ops:
    return None
  succ = successors(training_sequences, num_items) if {"substitute", "insert"} & set(ops) else None
  return Augmenter(ops=ops, crop=augment_cfg.crop, mask=augment_cfg.mask, reorder=augment_cfg.reorder,
                   substitute=augment_cfg.substitute, insert=augment_cfg.insert, mask_id=mask_id, successor=succ)
