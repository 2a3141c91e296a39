"""Item vocabularies and positions between domains.

An item table has one row per item id: id 0 is padding, id i (1 <= i <= num_items)
is the item with raw key `item_keys[i - 1]`, and rows beyond num_items + 1 are
sharding padding (the table is rounded up to `vocab_multiple`). Domains number
their items differently, so pretrained rows move to the target table by RAW
ITEM KEY, never by integer position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

UNSEEN_RULES = ("random", "mean", "zero")


def _key_list(keys, what: str) -> list:
  keys = keys.tolist() if hasattr(keys, "tolist") else list(keys)
  seen = {}
  for i, key in enumerate(keys):
    if key in seen:
      raise ValueError(f"{what}: item key {key!r} appears twice (ids {seen[key] + 1} and {i + 1})")
    seen[key] = i
  return keys


def map_item_rows(pretrained_rows, init_rows, source_keys: Sequence, target_keys: Sequence,
                  unseen: str = "mean", mask_token: bool = False):
  """Moves pretrained item rows to the target vocabulary by raw key.

  pretrained_rows: [source_vocab, ...]  item embedding [vocab, embed] or output bias [vocab]
                   of the pretrained model; source_vocab >= len(source_keys) + 1.
  init_rows:       [target_vocab, ...]  the same table freshly initialised in the target model.
  source_keys, target_keys: raw item keys; id i -> keys[i - 1].
  unseen:          how rows of target items absent from the source start:
                   "random": the fresh init rows, standardised per dimension and rescaled to the
                   mean and std of the pretrained item rows (distinct rows on the pretrained
                   scale; a dimension whose fresh init is constant, like a zero bias, gets the
                   pretrained mean); "mean": every unseen item the mean of the pretrained rows
                   of all source items (padding and sharding padding excluded), so they all
                   score alike; "zero": 0.

  mask_token:      both models have a [MASK] token right after their items (id num_items + 1,
                   BERT4Rec): its pretrained row moves to the target's mask id.

  Returns (rows [target_vocab, ...] with init_rows' dtype, report). Row 0 (padding) comes
  from the pretrained row 0; sharding-padding rows beyond len(target_keys) + 1 (+ 1 with a
  mask token) keep init.
  The report has counts and fractions of the overlap and `identity`: True when the two
  vocabularies are the same keys in the same order and the tables have the same shape, so
  every row that is ever used (padding and items) is the pretrained row.
  """
  if unseen not in UNSEEN_RULES:
    raise ValueError(f"Unknown unseen-item rule {unseen!r}; valid: {list(UNSEEN_RULES)}")
  pretrained = np.asarray(pretrained_rows)
  init = np.asarray(init_rows)
  src_keys = _key_list(source_keys, "source item keys")
  tgt_keys = _key_list(target_keys, "target item keys")
  if pretrained.shape[0] < len(src_keys) + 1:
    raise ValueError(f"pretrained item table has {pretrained.shape[0]} rows, fewer than "
                     f"{len(src_keys)} source items + padding")
  if init.shape[0] < len(tgt_keys) + 1:
    raise ValueError(f"target item table has {init.shape[0]} rows, fewer than "
                     f"{len(tgt_keys)} target items + padding")
  if pretrained.shape[1:] != init.shape[1:]:
    raise ValueError(f"item rows differ in shape: pretrained {pretrained.shape[1:]} vs target "
                     f"{init.shape[1:]} (embedding sizes must match)")

  source_id = {key: i + 1 for i, key in enumerate(src_keys)}
  target_ids = np.arange(1, len(tgt_keys) + 1)
  matched_src = np.array([source_id.get(key, 0) for key in tgt_keys], np.int64)
  known = matched_src > 0

  rows = init.copy()
  rows[0] = pretrained[0]
  rows[target_ids[known]] = pretrained[matched_src[known]].astype(init.dtype)
  unseen_ids = target_ids[~known]
  # statistics over every pretrained item (not only the overlap) so they exist with zero overlap
  real = pretrained[1:len(src_keys) + 1].astype(np.float64)
  if unseen == "random" and unseen_ids.size and len(real):
    fresh = init[unseen_ids].astype(np.float64)
    spread = fresh.std(axis=0)
    z = np.where(spread > 0, (fresh - fresh.mean(axis=0)) / np.where(spread > 0, spread, 1.0), 0.0)
    rows[unseen_ids] = (real.mean(axis=0) + z * real.std(axis=0)).astype(init.dtype)
  elif unseen == "mean" and unseen_ids.size:
    rows[unseen_ids] = real.mean(axis=0).astype(init.dtype) if len(real) else 0
  elif unseen == "zero":
    rows[unseen_ids] = 0

  if mask_token:
    if pretrained.shape[0] < len(src_keys) + 2 or init.shape[0] < len(tgt_keys) + 2:
      raise ValueError("mask_token=True needs a row after the items in both tables")
    rows[len(tgt_keys) + 1] = pretrained[len(src_keys) + 1].astype(init.dtype)

  overlap = int(known.sum())
  # same items in the same order: every row that is ever used equals the pretrained one
  identity = bool(src_keys == tgt_keys and pretrained.shape == init.shape)
  report = {
      "source_items": len(src_keys),
      "target_items": len(tgt_keys),
      "overlap": overlap,
      "unseen": len(tgt_keys) - overlap,
      "target_fraction_seen": overlap / max(len(tgt_keys), 1),  # target items with a pretrained row
      "source_fraction_used": overlap / max(len(src_keys), 1),  # source items carried over
      "unseen_init": unseen,
      "identity": identity,
  }
  return rows, report


def item_overlap(source_keys: Sequence, target_keys: Sequence, target_frequency=None) -> dict:
  """How much of the target's catalogue the source knows, by raw item key.

  target_frequency: interactions per target item id [len(target_keys) + 1] (id 0 unused), e.g.
  DomainSequences.item_frequency; gives `interaction_share`, the share of the target's
  interactions that fall on items with a pretrained row (what a transferred item table covers).
  """
  source = set(source_keys.tolist() if hasattr(source_keys, "tolist") else source_keys)
  seen = np.array([key in source for key in target_keys], bool)
  out = {"target_items": int(len(seen)), "overlap_items": int(seen.sum()),
         "item_share": float(seen.mean()) if len(seen) else 0.0}
  if target_frequency is not None:
    freq = np.asarray(target_frequency, np.float64)[1:len(seen) + 1]
    out["interaction_share"] = float(freq[seen].sum() / freq.sum()) if freq.sum() > 0 else 0.0
  return out


def resize_positions(pretrained_pos, init_pos, counted_from: str = "end"):
  """Position table [source_max_len, embed] -> [target_max_len, embed].

  counted_from (Roles.positions_from) says which rows mean the same slot in both tables. "end":
  the inputs are right-aligned and the most recent item sits at position max_len - 1, so rows are
  matched from the END: shrinking keeps the LAST target_max_len pretrained rows; growing puts the
  pretrained rows at the end and keeps the fresh init in the new rows at the FRONT (the oldest
  positions). "start": row 0 is the window's oldest item, so rows are matched from the START:
  shrinking keeps the FIRST rows; growing keeps the fresh init in the new rows at the end.
  """
  if counted_from not in ("end", "start"):
    raise ValueError(f"positions counted from {counted_from!r}; valid: ['end', 'start']")
  pretrained = np.asarray(pretrained_pos)
  init = np.asarray(init_pos)
  if pretrained.shape[1:] != init.shape[1:]:
    raise ValueError(f"position rows differ in shape: pretrained {pretrained.shape[1:]} vs target "
                     f"{init.shape[1:]}")
  keep = min(pretrained.shape[0], init.shape[0])
  rows = init.copy()
  if keep and counted_from == "end":
    rows[init.shape[0] - keep:] = pretrained[pretrained.shape[0] - keep:].astype(init.dtype)
  elif keep:
    rows[:keep] = pretrained[:keep].astype(init.dtype)
  return rows
