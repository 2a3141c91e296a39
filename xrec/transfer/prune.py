"""Pruning for serving cost: masks over a param tree, an iterative schedule, and the structured
kinds that shrink a Transformer encoder into a smaller dense one.

  magnitude  global unstructured magnitude pruning over every matrix of the encoder's blocks
             (kernels with >= 2 dims under roles.blocks): the smallest |w| are zeroed
  heads      attention heads of every block, the same number per block, by the L2 norm of each
             head's query / key / value / out weights (Michel et al., 2019 use importance; the
             norm is the usual proxy)
  mlp        MLP channels of every block, the same number per block, by the L2 norm of the
             channel's wi column and wo row
  items      item rows of the coldest items (fewest training interactions; ties by id): their rows
             of the item tables and the output bias; a pruned item is no longer recommended
             (`served_items`: evaluation ranks only the kept ones) and reads as a zero vector in a
             history; any encoder with an item table
  dims       embedding dimensions of the item tables (input and output, the same dims), by the
             L2 norm of each column over both: a pruned dim reads 0 into the model and is not
             scored; the dense model keeps tables [vocab, kept dims] (model.item_columns), so it
             stores and scores fewer dims per item; any encoder with an item table

`Pruner.masks(params, ratio)` gives 0/1 masks shaped like the params (1 = kept) for a target
ratio of the prunable entries (magnitude) or of the heads / channels (structured). The trainer
prunes at `schedule` steps with the ratio ramping up cubically (Zhu & Gupta, 2017) and fine-tunes
in between; masked entries are multiplied by 0 after every update, so they stay exactly zero.
`shrink` turns a structurally pruned Transformer's params into the params of a smaller dense one
(fewer heads or a smaller mlp_dim) that computes the same scores; `shrink_items` an item-pruned
model's params into a model over the kept items only (plus one zero row every pruned item maps to).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from xrec.models import common
from xrec.models.base import Roles

KINDS = ("magnitude", "heads", "mlp", "items", "dims")


def schedule(ratio: float, events: int, num_steps: int, start: float, end: float) -> list[tuple[int, float]]:
  """[(step, ratio at that step)]: `events` pruning steps spread evenly over [start, end] of the
  budget (fractions), ratios ramping up cubically to `ratio` at the last one."""
  if not 0.0 <= ratio < 1.0:
    raise ValueError(f"transfer.prune.ratio={ratio!r} must be in [0, 1)")
  if events < 1:
    raise ValueError(f"transfer.prune.events={events!r} must be >= 1")
  if not 0.0 <= start <= end <= 1.0:
    raise ValueError(f"transfer.prune needs 0 <= start <= end <= 1; got start={start}, end={end}")
  out = []
  for i in range(1, events + 1):
    at = start + (end - start) * (i / events if events > 1 else 1.0)
    out.append((max(1, int(round(at * num_steps))), ratio * (1.0 - (1.0 - i / events) ** 3)))
  return out


@dataclasses.dataclass(frozen=True)
class Pruner:
  kind: str
  roles: Roles
  item_counts: Any = None  # items: training interactions per item id [num_items + 1]

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"Unknown transfer.prune.kind {self.kind!r}; valid: {list(KINDS)}")
    if self.kind in ("items", "dims") and (not self.roles.item_table or self.roles.item_text):
      raise ValueError(f"transfer.prune.kind={self.kind!r} needs an encoder with an ID item table and no text "
                       "items (model.item_repr='id'); kinds that apply: ['magnitude'] (+ ['heads', 'mlp'] for "
                       "Transformers)")
    if self.kind in ("heads", "mlp") and not self.roles.attention:
      raise ValueError(f"transfer.prune.kind={self.kind!r} needs a Transformer encoder (attention heads and MLP "
                       "channels in its roles); kinds that apply to this encoder: ['magnitude']")

  UNITS = {"magnitude": "weights of the blocks' matrices", "heads": "attention heads per block (model.<encoder>.num_heads)",
           "mlp": "feed-forward channels per block", "items": "items", "dims": "item-table dims"}

  def check_removes_something(self, params, ratio: float) -> None:
    """A schedule whose final `ratio` rounds down to no unit of this kind (half of 1 head) would
    train the unpruned model under a pruning label: an error naming the unit, before any step."""
    if ratio > 0 and all(np.all(m) for m in common.flatten(self.masks(params, ratio)).values()):
      raise ValueError(f"transfer.prune.kind={self.kind!r} at transfer.prune.ratio={ratio:g} removes nothing from "
                       f"this model (the ratio rounds down to none of its {self.UNITS[self.kind]}): use a model "
                       f"with more of them, a higher ratio or another kind; valid kinds: {list(KINDS)}")

  def prunable(self, flat: dict) -> list[str]:
    """Paths magnitude pruning acts on: the blocks' matrices."""
    return [p for p, v in flat.items() if np.ndim(v) >= 2 and p.endswith("kernel")
            and any(p.startswith(b + "/") for b in self.roles.blocks)]

  def masks(self, params, ratio: float) -> dict:
    flat = {p: np.asarray(v) for p, v in common.flatten(params).items()}
    masks = {p: np.ones(v.shape, np.float32) for p, v in flat.items()}
    if ratio <= 0:
      return common.unflatten(masks)
    if self.kind == "magnitude":
      paths = self.prunable(flat)
      values = np.concatenate([np.abs(flat[p]).ravel() for p in paths])
      k = int(ratio * values.size)
      if k:
        threshold = np.partition(values, k - 1)[k - 1]
        for p in paths:
          masks[p] = (np.abs(flat[p]) > threshold).astype(np.float32)
    elif self.kind == "heads":
      for block in self.roles.blocks:
        scores = self._head_scores(flat, block)
        for h in np.argsort(scores, kind="stable")[:int(ratio * len(scores))]:
          for name in ("query", "key", "value"):
            for leaf in ("kernel", "bias"):
              path = f"{block}/attn/{name}/{leaf}"
              masks[path][..., h, :] = 0.0
          masks[f"{block}/attn/out/kernel"][h] = 0.0
    elif self.kind == "items":
      counts = np.asarray(self.item_counts)
      num_items = len(counts) - 1
      order = np.argsort(counts[1:], kind="stable") + 1  # coldest first, ties by id
      dead = order[:int(ratio * num_items)]
      for path in self.roles.item_rows:
        masks[path][dead] = 0.0
    elif self.kind == "dims":
      tables = [p for p in (self.roles.item_table, self.roles.output_table) if p]
      norms = np.sqrt(sum((flat[p].astype(np.float64) ** 2).sum(0) for p in tables))
      dead = np.argsort(norms, kind="stable")[:int(ratio * len(norms))]
      for p in tables:
        masks[p][:, dead] = 0.0
    else:  # mlp
      for block in self.roles.blocks:
        wi, wo = flat[f"{block}/mlp/wi/kernel"], flat[f"{block}/mlp/wo/kernel"]
        scores = np.sqrt((wi ** 2).sum(0) + (wo ** 2).sum(1))
        dead = np.argsort(scores, kind="stable")[:int(ratio * len(scores))]
        masks[f"{block}/mlp/wi/kernel"][:, dead] = 0.0
        masks[f"{block}/mlp/wi/bias"][dead] = 0.0
        masks[f"{block}/mlp/wo/kernel"][dead, :] = 0.0
    return common.unflatten(masks)

  @staticmethod
  def _head_scores(flat, block) -> np.ndarray:
    parts = [flat[f"{block}/attn/{n}/kernel"] for n in ("query", "key", "value")]  # [embed, heads, kv]
    score = sum((p ** 2).sum(axis=(0, 2)) for p in parts)
    return np.sqrt(score + (flat[f"{block}/attn/out/kernel"] ** 2).sum(axis=(1, 2)))  # out [heads, kv, embed]


def served_items(masks, roles: Roles):
  """[vocab] bool: the ids whose item rows are kept (items pruning zeroes every row of a pruned
  item: output bias, item and output tables); the rest are never ranked."""
  rows = np.asarray(common.flatten(masks)[roles.item_rows[0]])
  return rows.reshape(rows.shape[0], -1).max(axis=1) > 0


def shrink_items(params, masks, roles: Roles, small_shapes: dict, num_items: int,
                 mask_token: bool = False) -> tuple[dict, np.ndarray]:
  """(params of the model over the kept items, id map old id -> new id): kept item i becomes its
  rank among the kept (1..n), every pruned item the one zero row n + 1 (what a pruned item reads
  as in a history; the small model is built for n + 1 items and ranks only 1..n), and a
  bidirectional encoder's mask token row moves to n + 2; `small_shapes` ({path: shape}) is that
  model's tree (vocab rounding, padding)."""
  served = served_items(masks, roles)
  vocab = len(served)
  kept = np.flatnonzero(served[1:num_items + 1]) + 1
  flat = {p: np.asarray(v) for p, v in common.flatten(params).items()}
  id_map = np.zeros(vocab, np.int64)
  id_map[1:] = len(kept) + 1
  id_map[kept] = np.arange(1, len(kept) + 1)
  out = dict(flat)
  for path in roles.item_rows:
    rows = np.zeros(small_shapes[path], flat[path].dtype)
    rows[0] = flat[path][0]
    rows[1:len(kept) + 1] = flat[path][kept]
    if mask_token:
      rows[len(kept) + 2] = flat[path][num_items + 1]
    out[path] = rows  # row n + 1 (pruned) and sharding padding stay zero
  return common.unflatten(out), id_map


def kept_dims(masks, roles: Roles) -> tuple[int, ...]:
  """The embedding dims the item table keeps (dims pruning)."""
  return tuple(int(i) for i in np.flatnonzero(np.asarray(common.flatten(masks)[roles.item_table]).max(0) > 0))


def shrink_dims(params, masks, roles: Roles) -> tuple[dict, dict]:
  """(params of the model whose item tables keep only the unpruned dims, its model fields)."""
  kept = np.asarray(kept_dims(masks, roles))
  flat = {p: np.asarray(v) for p, v in common.flatten(params).items()}
  for path in (roles.item_table, roles.output_table):
    if path:
      flat[path] = flat[path][:, kept]
  return common.unflatten(flat), {"item_columns": tuple(int(i) for i in kept)}


def sparsity(params, masks, paths=None) -> float:
  """Share of zeroed entries among `paths` (default: every masked leaf with a zero)."""
  flat_m = common.flatten(masks)
  paths = paths or list(flat_m)
  total = sum(np.size(flat_m[p]) for p in paths)
  return float(sum((np.asarray(flat_m[p]) == 0).sum() for p in paths) / max(total, 1))


def shrink(params, masks, kind: str, roles: Roles) -> tuple[dict, dict]:
  """(params of a smaller dense Transformer, model fields to change) from structured masks: the
  kept heads / channels of every block (the same count per block)."""
  flat = {p: np.asarray(v) for p, v in common.flatten(params).items()}
  flat_m = {p: np.asarray(v) for p, v in common.flatten(masks).items()}
  out = dict(flat)
  if kind == "heads":
    keep_counts = set()
    for block in roles.blocks:
      kept = np.flatnonzero(flat_m[f"{block}/attn/out/kernel"].reshape(flat_m[f"{block}/attn/out/kernel"].shape[0], -1).max(1) > 0)
      keep_counts.add(len(kept))
      for name in ("query", "key", "value"):
        out[f"{block}/attn/{name}/kernel"] = flat[f"{block}/attn/{name}/kernel"][:, kept]
        out[f"{block}/attn/{name}/bias"] = flat[f"{block}/attn/{name}/bias"][kept]
      out[f"{block}/attn/out/kernel"] = flat[f"{block}/attn/out/kernel"][kept]
    if len(keep_counts) != 1:
      raise ValueError(f"blocks kept different numbers of heads {sorted(keep_counts)}: not one dense model")
    return common.unflatten(out), {"num_heads": keep_counts.pop()}
  if kind == "mlp":
    keep_counts = set()
    for block in roles.blocks:
      kept = np.flatnonzero(flat_m[f"{block}/mlp/wi/kernel"].max(0) > 0)
      keep_counts.add(len(kept))
      out[f"{block}/mlp/wi/kernel"] = flat[f"{block}/mlp/wi/kernel"][:, kept]
      out[f"{block}/mlp/wi/bias"] = flat[f"{block}/mlp/wi/bias"][kept]
      out[f"{block}/mlp/wo/kernel"] = flat[f"{block}/mlp/wo/kernel"][kept, :]
    if len(keep_counts) != 1:
      raise ValueError(f"blocks kept different numbers of MLP channels {sorted(keep_counts)}: not one dense model")
    return common.unflatten(out), {"mlp_dim": keep_counts.pop()}
  raise ValueError(f"only structured pruning (heads, mlp) shrinks the model; got {kind!r}")
