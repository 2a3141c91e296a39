"""Overlapping-user inputs: a target user's own history plus what the same person did in the source
domain (cross-platform / cross-app scenarios, users matched by raw key).

Two input modes, both in the model's item-id space (ids >= `offset`, the target model's vocab size,
are not target items; the model wrapper xrec/transfer/insert/cross_user.py CrossUser embeds them):

  merged  C2DSR-style input: the user's target and source interactions merged chronologically
          into one sequence (at equal times the target item first); a source item with source id s
          appears as id offset + s. Every position predicts the NEXT TARGET item after it (source
          items are read, never scored).
  prefix  one token for the user's source history right before the target items, id offset + row:
          the model maps it to a representation that a source encoder computed from that history
          (xrec/train/loop.py fills the table). Each user has two rows: `prefix_row(u, "train")`
          (source items before the training window's first item) and `prefix_row(u, "eval")`
          (before the validation item).

No leakage: every source item a position reads is strictly older than the target item it predicts
(merged: the next target; prefix, training: every item of the window; validation / test: the
held-out item; the test input reads the same prefix as validation). A user without source history
before that time gets the plain target input, so both modes work at any overlap.
"""

from __future__ import annotations

import numpy as np

MODES = ("merged", "prefix")


def _right_align(seq, max_len: int) -> np.ndarray:
  out = np.zeros(max_len, np.int32)
  tail = np.asarray(seq)[-max_len:]
  if len(tail):
    out[max_len - len(tail):] = tail
  return out


class CrossUserInputs:
  """Per target user, its source history (items in source ids, timestamps), and the examples of
  both modes. `target` / `source` are DomainSequences (xrec/data/pipeline.py) of the two domains;
  the source's items keep their own ids (no remapping)."""

  def __init__(self, target, source, mode: str, offset: int, max_len: int):
    if mode not in MODES:
      raise ValueError(f"Unknown transfer.cross_user.mode {mode!r}; valid: {list(MODES)}")
    self.mode, self.offset, self.target, self.max_len = mode, int(offset), target, int(max_len)
    position = {key: i for i, key in enumerate(source.user_keys)}
    self.source_index = np.array([position.get(k, -1) for k in target.user_keys], np.int64)
    self.source = source
    shared = int((self.source_index >= 0).sum())
    if shared == 0:
      raise ValueError(f"overlapping-user models need users present in both domains: none of the "
                       f"{target.num_users} users of domain {target.name!r} is among the {source.num_users} "
                       f"users of domain {source.name!r} (matched by raw user key); use a scenario with "
                       "shared users (e.g. data.synthetic.user_overlap > 0) or another strategy")
    before_valid = sum(1 for u in range(target.num_users) if len(self.prefix_history(u, "eval")))
    self.report = {"mode": mode, "target_users": target.num_users, "shared_users": shared,
                   "users_with_source_history": before_valid,  # some source item before the validation item
                   "user_overlap": before_valid / target.num_users, "source_domain": source.name,
                   "source_users": source.num_users}

  @property
  def prefix_rows(self) -> int:
    """Rows of the prefix table: 0 (no token) and two per target user."""
    return 2 * self.target.num_users + 1

  @staticmethod
  def prefix_row(u: int, kind: str) -> int:
    return 2 * int(u) + (1 if kind == "train" else 2)

  # --- what a user did in the source domain before a time
  def source_before(self, u: int, time: int):
    """(source item ids, their timestamps) of target user `u` strictly before `time`."""
    s = self.source_index[u]
    if s < 0:
      return np.zeros(0, np.int64), np.zeros(0, np.int64)
    items, stamps = self.source.sequence(s), self.source.timestamps(s)
    keep = stamps < time
    return items[keep], stamps[keep]

  def _window(self, u: int) -> np.ndarray:
    """The items of u's training window (the newest max_len of its training part)."""
    return self.target.sequence(u)[:-2][-self.max_len:]

  def prefix_history(self, u: int, kind: str) -> np.ndarray:
    """The source history a prefix row reads: "train", before the time of the training window's
    first item; "eval", before the validation item's time."""
    stamps = self.target.timestamps(u)
    if kind == "train":
      first = len(self.target.sequence(u)) - 2 - len(self._window(u))
      return self.source_before(u, int(stamps[first]))[0]
    return self.source_before(u, int(stamps[-2]))[0]

  def _merged(self, u: int, cut: int, training: bool):
    """(ids, is_target): the target items before position `cut` of u's sequence merged with the
    source items strictly before the time of the last of them (training, cut = the training part)
    or of the item at `cut` (evaluation), chronologically, the target item first at equal times."""
    items, stamps = self.target.sequence(u), self.target.timestamps(u)
    own, own_t = items[:cut], stamps[:cut]
    until = int(own_t[-1]) if training else int(stamps[cut])
    other, other_t = self.source_before(u, until)
    ids = np.concatenate([own, other + self.offset])
    times = np.concatenate([own_t, other_t])
    is_target = np.concatenate([np.ones(len(own), bool), np.zeros(len(other), bool)])
    order = np.lexsort((~is_target, times))
    return ids[order], is_target[order]

  def train_example(self, u: int, max_len: int) -> dict:
    """The training window of user `u` (its sequence without the valid / test items)."""
    train = self.target.sequence(u)[:-2]
    if self.mode == "prefix":
      w = self._window(u)
      has = len(self.prefix_history(u, "train")) > 0
      inputs = ([self.offset + self.prefix_row(u, "train")] if has else []) + list(w[:-1])
      targets = ([w[0]] if has else []) + list(w[1:])
      return {"inputs": _right_align(inputs, max_len), "targets": _right_align(targets, max_len),
              "items": _right_align(train, max_len)}
    ids, is_target = self._merged(u, len(train), training=True)
    # the next target item after every position (the merged sequence ends on a target item)
    nxt = np.zeros(len(ids), np.int64)
    upcoming = 0
    for j in range(len(ids) - 1, -1, -1):
      nxt[j] = upcoming
      if is_target[j]:
        upcoming = ids[j]
    window = slice(max(0, len(ids) - 1 - max_len), len(ids) - 1)
    return {"inputs": _right_align(ids[window], max_len), "targets": _right_align(nxt[window], max_len),
            "items": _right_align(train, max_len)}

  def eval_inputs(self, u: int, cut: int, max_len: int) -> np.ndarray:
    """The model input predicting the item at position `cut` (-2 valid, -1 test) of u's sequence."""
    seq = self.target.sequence(u)
    cut = cut % len(seq)
    if self.mode == "prefix":
      history = list(seq[:cut][-(max_len - 1):])
      token = [self.offset + self.prefix_row(u, "eval")] if len(self.prefix_history(u, "eval")) else []
      return _right_align(token + history, max_len)
    ids, _ = self._merged(u, cut, training=False)
    return _right_align(ids, max_len)
