"""Full-ranking metrics against a brute-force numpy reference (ties, masking, padding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from xrec.evaluate import metrics as M


def _random_case(seed, batch=24, num_items=40, vocab=48, hist=6, tie_levels=5):
  rng = np.random.default_rng(seed)
  # few distinct values -> many ties, including ties with the target
  scores = rng.integers(0, tie_levels, size=(batch, vocab)).astype(np.float32)
  targets = rng.integers(1, num_items + 1, size=batch).astype(np.int32)
  history = rng.integers(0, num_items + 1, size=(batch, hist)).astype(np.int32)
  history[0, 0] = targets[0]  # the target inside the history is never masked
  return scores, targets, history


def _device_metrics(scores, targets, history, num_items, ks=M.DEFAULT_KS):
  rank = M.target_rank(jnp.asarray(scores), jnp.asarray(targets), num_items,
                       None if history is None else jnp.asarray(history))
  sums = M.metric_sums(rank, jnp.ones(len(targets), jnp.float32), ks)
  return M.finalize(jax.device_get(sums))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("mask", [False, True])
def test_metrics_match_bruteforce_reference(seed, mask):
  scores, targets, history = _random_case(seed)
  hist = history if mask else None
  got = _device_metrics(scores, targets, hist, num_items=40)
  want = M.reference_metrics(scores, targets, 40, hist)
  for k, v in want.items():
    assert got[k] == pytest.approx(v, abs=1e-6), k


def test_continuous_scores_match_sorting():
  rng = np.random.default_rng(7)
  scores = rng.normal(size=(16, 30)).astype(np.float32)
  targets = rng.integers(1, 30, size=16).astype(np.int32)
  got = _device_metrics(scores, targets, None, num_items=29)
  # without ties the rank is the position in a descending sort of items 1..29
  ranks = [list(np.argsort(-scores[b, 1:30]) + 1).index(targets[b]) for b in range(16)]
  assert got["hr@10"] == pytest.approx(np.mean([r < 10 for r in ranks]))
  assert got["ndcg@10"] == pytest.approx(np.mean([(r < 10) / np.log2(r + 2) for r in ranks]), abs=1e-6)
  assert got["mrr@50"] == pytest.approx(np.mean([1 / (r + 1) for r in ranks]), abs=1e-6)


def test_ties_count_against_the_target_and_padding_is_never_ranked():
  scores = np.zeros((1, 12), np.float32)  # all equal
  scores[0, 0] = 100.0  # padding id 0 must not count
  scores[0, 11] = 100.0  # sharding-padding id beyond num_items must not count
  got = _device_metrics(scores, np.array([3], np.int32), None, num_items=10)
  assert got["hr@10"] == 1.0 and got["hr@5"] == 0.0  # 9 other valid items tie -> rank 9
  assert got["ndcg@10"] == pytest.approx(1 / np.log2(11))


def test_history_masking_removes_seen_items():
  scores = np.arange(10, dtype=np.float32)[None].repeat(2, 0)  # item 9 best, then 8, ...
  targets = np.array([7, 7], np.int32)
  history = np.array([[9, 8], [0, 0]], np.int32)
  got = _device_metrics(scores, targets, history, num_items=9, ks=(1, 3))
  assert got["hr@1"] == 0.5  # user 0: 9 and 8 masked -> rank 0; user 1: rank 2
  assert got["hr@3"] == 1.0


def test_weight_zero_rows_do_not_count():
  scores, targets, _ = _random_case(3, batch=8)
  rank = M.target_rank(jnp.asarray(scores), jnp.asarray(targets), 40)
  w = jnp.array([1, 1, 1, 1, 0, 0, 0, 0], jnp.float32)
  got = M.finalize(jax.device_get(M.metric_sums(rank, w)))
  want = M.reference_metrics(scores[:4], targets[:4], 40)
  assert got["num_users"] == 4
  assert got["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)


def test_sharded_over_items_equals_unsharded():
  assert jax.device_count() >= 4
  mesh = jax.make_mesh((2, 2), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  scores, targets, history = _random_case(5, batch=8, vocab=48)
  sh = NamedSharding(mesh, P("data", "model"))
  s = jax.device_put(jnp.asarray(scores), sh)
  f = jax.jit(lambda s, t, h: M.metric_sums(M.target_rank(s, t, 40, h), jnp.ones(8), M.DEFAULT_KS))
  got = M.finalize(jax.device_get(f(s, jnp.asarray(targets), jnp.asarray(history))))
  want = M.reference_metrics(scores, targets, 40, history)
  assert got["ndcg@10"] == pytest.approx(want["ndcg@10"], abs=1e-6)
  assert got["mrr@50"] == pytest.approx(want["mrr@50"], abs=1e-6)


def test_top_k_on_device_respects_masks():
  scores = np.arange(8, dtype=np.float32)[None]
  ids, vals = M.top_k_items(jnp.asarray(scores), 3, num_items=6, history=jnp.array([[6]]))
  assert ids.tolist() == [[5, 4, 3]]  # 7 is sharding padding, 6 is history


def test_non_finite_scores_rank_last():
  """A diverged model (NaN params -> NaN scores) scores 0, never 1 (NaN >= x is False)."""
  n = 6
  nan = jnp.full((2, n + 2), jnp.nan)
  rank = M.target_rank(nan, jnp.array([1, 3]), n)
  assert rank.tolist() == [n - 1, n - 1]  # every other real item beats it (padding ids never count)
  out = M.finalize(M.metric_sums(rank, jnp.ones(2), (1,)))
  assert out["hr@1"] == 0.0 and out["ndcg@1"] == 0.0
  scores = jnp.array([[0.0, 0.1, jnp.nan, 0.3, 0.2, 0.05, 0.0, 0.0]])
  assert int(M.target_rank(scores, jnp.array([3]), n)[0]) == 1  # only the NaN item beats it
  scores = scores.at[0, 3].set(jnp.nan)
  assert int(M.target_rank(scores, jnp.array([3]), n)[0]) == n - 1  # a NaN target is last
