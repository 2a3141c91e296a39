"""Full-ranking metrics over the whole catalogue (no sampled negatives).

With one held-out target per user (leave-one-out), everything follows from
the target's 0-based rank among all valid items:

  HR@K = Recall@K = [rank < K]
  NDCG@K          = [rank < K] / log2(rank + 2)
  MRR@K           = [rank < K] / (rank + 1)

Ties are counted against the target (rank = number of other valid items
scoring >= the target), so a model that scores everything equally gets the
worst rank, never a lucky one; NaN scores count as worst too (a diverged model
scores 0). With `mask_history`, items the user
interacted with before the target are removed from the ranking. A target the
user already interacted with (a repeat) is, by `target_in_history`:
  "rank"     ranked like any target (never removed with the history): default
  "exclude"  removed with the rest of the history, so that user scores a miss at every K
Without `mask_history` nothing is removed and a repeated target is ranked.

Sampled-negative evaluation (eval.negatives = N > 0, for comparing with papers that rank against
N sampled items) ranks the target against N items the user never interacted with as well, and
reports those metrics beside the full ranking's as `sampled_<metric>@K`; full ranking stays the
headline.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DEFAULT_KS = (1, 5, 10, 20, 50)
METRIC_NAMES = ("hr", "recall", "ndcg", "mrr")
TIES = "pessimistic"
TARGET_IN_HISTORY = ("rank", "exclude")


def mask_scores(scores, num_items: int, history=None, candidates=None):
  """scores [batch, vocab] -> -inf at padding id 0, sharding-padding ids, (optionally) history and
  items outside `candidates` ([vocab] bool: e.g. the items a pruned model no longer serves)."""
  vocab = scores.shape[-1]
  ids = jnp.arange(vocab)
  valid = (ids >= 1) & (ids <= num_items)
  if candidates is not None:
    valid = valid & candidates
  scores = jnp.where(valid, scores, -jnp.inf)
  if history is not None:
    rows = jnp.arange(scores.shape[0])[:, None]
    scores = scores.at[rows, history].set(-jnp.inf)
  return scores


def target_rank(scores, targets, num_items: int, history=None, candidates=None, exclude_repeated_target=False):
  """0-based pessimistic rank [batch] of each target among valid items.

  scores [batch, vocab] (any float dtype), targets [batch] ids in [1, num_items],
  history [batch, hist] ids to exclude (0 = padding) or None, candidates [vocab] bool or None:
  the items that may be recommended (a target outside them, or beyond num_items, gets rank
  vocab: a miss at every K). exclude_repeated_target: a target found in `history` is removed with
  it (rank vocab, a miss); otherwise it is ranked.
  """
  rows = jnp.arange(scores.shape[0])
  # a non-finite score is worthless: a NaN target ranks last, a NaN item beats the target (so a
  # diverged model scores 0, never a perfect 1 from comparisons with NaN being False)
  target_score = scores[rows, targets]
  target_score = jnp.where(jnp.isnan(target_score), -jnp.inf, target_score)
  servable = (targets >= 1) & (targets <= num_items)
  if candidates is not None:
    servable = servable & candidates[targets]
  if exclude_repeated_target and history is not None:
    servable = servable & ~(history == targets[:, None]).any(-1)
  target_score = jnp.where(servable, target_score, -jnp.inf)
  ids = jnp.arange(scores.shape[-1])
  ranked = jnp.isfinite(mask_scores(jnp.zeros_like(scores), num_items, history, candidates))  # valid, not history
  beats = (jnp.where(jnp.isnan(scores), jnp.inf, scores) >= target_score[:, None]) & ranked
  beats = beats & (ids[None, :] != targets[:, None])
  # a target that cannot be recommended is a miss at every K, however few items are ranked
  return jnp.where(servable, beats.sum(-1), scores.shape[-1]).astype(jnp.int32)


def sampled_rank(scores, targets, negatives):
  """0-based pessimistic rank [batch] of each target among its own sampled negatives
  ([batch, n] item ids, 0 = padding, not ranked): the number of negatives scoring >= the target
  (a NaN target ranks last, a NaN negative beats it)."""
  rows = jnp.arange(scores.shape[0])
  target_score = scores[rows, targets]
  target_score = jnp.where(jnp.isnan(target_score), -jnp.inf, target_score)
  neg = jnp.take_along_axis(scores, negatives, axis=1)
  beats = (jnp.where(jnp.isnan(neg), jnp.inf, neg) >= target_score[:, None]) & (negatives > 0)
  return beats.sum(-1).astype(jnp.int32)


SAMPLED_PREFIX = "sampled_"  # sampled-negative metrics: sampled_ndcg@10 beside the full ranking's ndcg@10


def metric_sums(rank, weight, ks=DEFAULT_KS) -> dict:
  """Weighted sums over the batch of every metric@K (divide by the weight sum for means)."""
  rank_f = rank.astype(jnp.float32)
  out = {"count": weight.sum()}
  for k in ks:
    hit = (rank < k).astype(jnp.float32) * weight
    out[f"hr@{k}"] = hit.sum()
    out[f"recall@{k}"] = hit.sum()
    out[f"ndcg@{k}"] = (hit / jnp.log2(rank_f + 2.0)).sum()
    out[f"mrr@{k}"] = (hit / (rank_f + 1.0)).sum()
  return out


def top_k_items(scores, k: int, num_items: int, history=None, mesh=None, vocab_axis: str = "model"):
  """Top-k recommendations on device: (item ids [batch, k], scores [batch, k]).

  With a `mesh` whose `vocab_axis` splits the vocab axis of `scores` over several devices (as
  evaluation's [batch, vocab] scores are), each device takes the top k of its own block and only
  those [batch, devices x k] candidates are merged: the [batch, vocab] scores are never gathered."""
  masked = mask_scores(scores, num_items, history)
  shards = int(mesh.shape[vocab_axis]) if mesh is not None else 1
  if shards <= 1:
    values, ids = jax.lax.top_k(masked, k)
    return ids, values
  batch, vocab = masked.shape
  if vocab % shards:
    raise ValueError(f"top_k_items: {vocab} scores do not split over the {shards} devices of mesh axis {vocab_axis!r}")
  width = vocab // shards

  def local_top_k(block):  # [batch, width]: one device's block of the catalogue
    values, ids = jax.lax.top_k(block, min(k, width))
    return values, ids + jax.lax.axis_index(vocab_axis) * width

  values, ids = jax.shard_map(local_top_k, mesh=mesh, in_specs=P(None, vocab_axis),
                              out_specs=(P(None, vocab_axis), P(None, vocab_axis)))(masked)
  values, pick = jax.lax.top_k(values, k)  # merge the devices' candidates [batch, devices x k]
  return jnp.take_along_axis(ids, pick, axis=1), values


def finalize(sums: dict) -> dict:
  """Host-side: summed metrics -> means (floats), plus the number of users."""
  count = float(sums["count"])
  if count <= 0:
    raise ValueError("evaluation saw no users")
  out = {k: float(v) / count for k, v in sums.items() if k != "count"}
  out["num_users"] = int(round(count))
  return out


def reference_metrics(scores: np.ndarray, targets: np.ndarray, num_items: int, history=None,
                      ks=DEFAULT_KS, exclude_repeated_target=False) -> dict:
  """Brute-force numpy version (per user, explicit sort) used to check the device path."""
  out = {f"{m}@{k}": 0.0 for k in ks for m in METRIC_NAMES}
  n = len(targets)
  for b in range(n):
    s = scores[b].astype(np.float64)
    t = int(targets[b])
    seen = set(int(h) for h in (history[b] if history is not None else []) if h != 0)
    if exclude_repeated_target and t in seen:
      continue  # removed with the history: a miss
    others = [s[i] for i in range(1, num_items + 1) if i != t and i not in seen]
    rank = sum(1 for v in others if v >= s[t])
    for k in ks:
      if rank < k:
        out[f"hr@{k}"] += 1 / n
        out[f"recall@{k}"] += 1 / n
        out[f"ndcg@{k}"] += 1 / np.log2(rank + 2) / n
        out[f"mrr@{k}"] += 1 / (rank + 1) / n
  return out
