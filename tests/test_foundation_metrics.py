"""Full-ranking metrics against a brute-force numpy reference (ties, masking, padding)."""

import re

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


@pytest.mark.parametrize("encoder", ["sasrec", "bert4rec"])
def test_length_buckets_score_exactly_like_full_length_inputs(data_dir, encoder):
  """Evaluation in length buckets (users by history length, each batch cut to the input slots its
  longest history needs) gives the same ranks and metrics as full-length inputs, and does cut."""
  from conftest import tiny_config
  from xrec import models, sharding
  from xrec.data import pipeline
  from xrec.evaluate.evaluator import Evaluator
  c = tiny_config(data_dir)
  c.model.name = encoder
  c.model.max_len = 64  # longer than most synthetic histories (mean 12, max 30): widths 8 .. 64
  c.eval.batch_size = 8
  domain = pipeline.load_domain(c.data)
  module = models.build(c.model, domain.num_items)
  params = module.init(jax.random.key(0), jnp.ones((1, c.model.max_len), jnp.int32))["params"]
  mesh = sharding.make_mesh(c.mesh)
  bucketed = Evaluator(module, domain.num_items, c.model.max_len, c.eval, mesh, None)
  full = Evaluator(module, domain.num_items, c.model.max_len, c.eval, mesh, None, length_buckets=False)
  widths = [b["inputs"].shape[-1] for b in bucketed._batches(domain, "test")[0]]
  assert bucketed.length_buckets and min(widths) < c.model.max_len and widths == sorted(widths)
  for split in ("valid", "test"):
    (m_b, r_b), (m_f, r_f) = bucketed(params, domain, split, True), full(params, domain, split, True)
    np.testing.assert_array_equal(r_b, r_f)  # per user, in domain.eval_users order
    for k in ("ndcg@10", "hr@10", "mrr@50"):
      assert m_b[k] == pytest.approx(m_f[k], abs=1e-9)


@pytest.mark.parametrize("encoder", ["sasrec", "bert4rec"])
def test_trimmed_inputs_give_the_same_states_as_left_padded_ones(encoder):
  """... and last_states (the last block computing only the last position) is the last state."""
  from xrec.models.bert4rec import BERT4Rec
  from xrec.models.sasrec import SASRec
  m = {"sasrec": SASRec, "bert4rec": BERT4Rec}[encoder](vocab_size=24, max_len=10, num_items=20, embed_dim=8,
                                                        num_heads=2, mlp_dim=16, dropout=0.0)
  x = np.zeros((3, 10), np.int32)
  x[0, 6:] = [3, 4, 5, 6]
  x[1, 8:] = [7, 8]
  x[2, 4:] = [1, 2, 9, 10, 11, 12]
  params = m.init(jax.random.key(0), jnp.asarray(x), method="encode")["params"]
  full = m.apply({"params": params}, jnp.asarray(x), method="encode")
  cut = m.apply({"params": params}, jnp.asarray(x[:, 3:]), method="encode")
  np.testing.assert_allclose(np.asarray(cut)[:, -6:], np.asarray(full)[:, -6:], rtol=1e-5, atol=1e-6)
  last = m.apply({"params": params}, jnp.asarray(x), method="last_states")
  np.testing.assert_allclose(np.asarray(last), np.asarray(full)[:, -1], rtol=1e-5, atol=1e-6)


def test_evaluation_batch_must_divide_over_the_processes(data_dir, monkeypatch):
  from conftest import tiny_config
  from xrec import models, sharding
  from xrec.evaluate.evaluator import Evaluator
  c = tiny_config(data_dir)
  c.eval.batch_size = 16
  module = models.build(c.model, 50)
  monkeypatch.setattr(jax, "process_count", lambda: 3)
  with pytest.raises(ValueError, match=r"eval.batch_size=16 does not divide over the 3 processes; use a multiple of 3"):
    Evaluator(module, 50, c.model.max_len, c.eval, sharding.make_mesh(c.mesh), None)


def test_top_k_per_shard_equals_top_k_and_never_gathers_the_catalogue():
  """Evaluation on a vocab-sharded catalogue: top-k per shard then merged gives lax.top_k's
  answer, and the compiled step moves only [batch, shards x k] candidates between devices."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  rng = np.random.default_rng(3)
  vocab, n, k = 4096, 4000, 10
  scores = rng.normal(size=(8, vocab)).astype(np.float32)
  history = rng.integers(0, n + 1, size=(8, 12)).astype(np.int32)
  want_ids, want_vals = M.top_k_items(jnp.asarray(scores), k, n, jnp.asarray(history))
  mesh = jax.make_mesh((1, 4), ("data", "model"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  sharded = jax.device_put(jnp.asarray(scores), NamedSharding(mesh, P(None, "model")))
  f = jax.jit(lambda s, h: M.top_k_items(s, k, n, h, mesh=mesh))
  ids, vals = f(sharded, jnp.asarray(history))
  np.testing.assert_array_equal(np.asarray(ids), np.asarray(want_ids))
  np.testing.assert_allclose(np.asarray(vals), np.asarray(want_vals))
  hlo = f.lower(sharded, jnp.asarray(history)).compile().as_text()
  moved = [m.group(1) for m in re.finditer(
      r"= (.+?) (?:all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\(", hlo)]
  assert moved, "expected the merge to gather the shards' candidates"
  for result in moved:  # each array moved is [batch, shards x k] or smaller, never [batch, vocab]
    for dims in re.findall(r"\[([\d,]*)\]", result):
      assert int(np.prod([int(d) for d in dims.split(",") if d] or [1])) <= 8 * 4 * k, result
