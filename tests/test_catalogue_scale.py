"""Million-item catalogues: the chunked full softmax and evaluation on a vocab-sharded item table
never hold or move [batch, (len,) vocab] arrays (checked on the compiled programs over 4 devices)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from xrec import models, sharding
from xrec.evaluate import evaluator
from xrec.models import losses
from xrec.train import objectives, optimizer
from xrec.train.step import create_state, make_train_step

NUM_ITEMS = 20_000


def _collectives(hlo: str):
  """(op, elements of its largest array) of every collective in a compiled program; XLA combines
  several collectives into one over a tuple, so every array of the result counts."""
  out = []
  for line in hlo.splitlines():
    m = re.search(r"= (.+?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(-start)?\(", line)
    if m:
      sizes = [int(np.prod([int(d) for d in dims.split(",") if d] or [1])) for dims in re.findall(r"\[([\d,]*)\]", m.group(1))]
      out.append((m.group(2), max(sizes, default=1)))
  return out


@pytest.mark.parametrize("chunk_size,shards", [(8, 1), (5, 4), (100, 2)])
def test_chunked_softmax_equals_full_softmax_value_and_gradients(chunk_size, shards):
  rng = np.random.default_rng(0)
  h = jnp.asarray(rng.normal(size=(3, 5, 8)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, 51, size=(3, 5)), jnp.int32)  # 0 = padding
  table = jnp.asarray(rng.normal(size=(64, 8)), jnp.float32)  # 50 items + padding rows
  bias = jnp.asarray(rng.normal(size=64), jnp.float32)

  def run(fn, **kw):
    return jax.value_and_grad(lambda *a: fn(a[0], targets, a[1], a[2], num_items=50, **kw)[0],
                              argnums=(0, 1, 2))(h, table, bias)
  (want, want_grads), (got, got_grads) = run(losses.full_softmax), run(
      losses.chunked_softmax, chunk_size=chunk_size, vocab_shards=shards)
  assert float(got) == pytest.approx(float(want), rel=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5, atol=1e-6)


def _sharded_model(data_dir, terms=()):
  """A SASRec over a 20k-item catalogue whose item table is split on 'vocab' over 4 devices."""
  cfg = tiny_config(data_dir)
  cfg.mesh.model = 4
  cfg.sharding.rules = tuple((a, None if a in ("heads", "mlp") else m) for a, m in cfg.sharding.rules)
  cfg.objective.terms = terms
  cfg.objective.chunked_softmax.chunk_size = 512
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding.rules)
  module = models.build(cfg.model, NUM_ITEMS, cfg.model.max_len)
  tx, _ = optimizer.make_optimizer(cfg.optim, 10)
  state, state_sh = create_state(module, tx, cfg.model.max_len, 0, mesh, rules)
  return cfg, mesh, rules, module, tx, state, state_sh


def _batch(cfg, rows):
  ids = np.random.default_rng(1).integers(1, NUM_ITEMS + 1, size=(rows, cfg.model.max_len + 1)).astype(np.int32)
  return ids


def test_chunked_softmax_step_on_a_vocab_sharded_table(data_dir):
  """Same update as full_softmax on 4 devices, with no [batch, len, vocab] buffer: the compiled
  step's temporary memory per device is a fraction of full_softmax's, and no collective moves
  more than a [batch x len] row of per-position values or the table's own gradient."""
  steps, ids = {}, None
  for term in ("full_softmax", "chunked_softmax"):
    cfg, mesh, rules, module, tx, state, state_sh = _sharded_model(data_dir, ((term, 1.0),))
    ids = _batch(cfg, cfg.train.batch_size)
    batch = sharding.put_batch({"target": {"inputs": ids[:, :-1], "targets": ids[:, 1:], "items": ids[:, 1:]}}, mesh)
    step = make_train_step(module, tx, objectives.assemble(cfg.objective, True), NUM_ITEMS, state_sh, mesh,
                                vocab_shards=sharding.axis_shards(mesh, rules, "vocab"))
    compiled = step.lower(state, batch, jax.random.key(0)).compile()
    new_state, stats = step(state, batch, jax.random.key(0))
    steps[term] = (compiled, float(stats["loss"]), jax.device_get(new_state["params"]))
  (full, full_loss, full_params), (chunked, chunked_loss, chunked_params) = steps["full_softmax"], steps["chunked_softmax"]
  assert chunked_loss == pytest.approx(full_loss, rel=1e-5)
  for a, b in zip(jax.tree.leaves(full_params), jax.tree.leaves(chunked_params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
  positions = cfg.train.batch_size * cfg.model.max_len
  vocab = module.vocab_size
  logits_bytes_per_device = positions * vocab // 4 * 4
  assert full.memory_analysis().temp_size_in_bytes > logits_bytes_per_device  # the full logits exist
  assert chunked.memory_analysis().temp_size_in_bytes < logits_bytes_per_device / 2
  table_elements = vocab * cfg.model.embed_dim
  for op, n in _collectives(chunked.as_text()):
    assert n <= max(positions * cfg.model.embed_dim, table_elements), (op, n)
  assert f"{cfg.train.batch_size},{cfg.model.max_len},{vocab // 4}]" not in chunked.as_text()


def test_evaluation_ranks_per_shard_without_gathering_the_scores(data_dir):
  """Full-ranking evaluation on a vocab-sharded table: each device ranks the target within its own
  block of the catalogue and only per-user counts cross devices (no [users, vocab] gather)."""
  cfg, mesh, rules, module, tx, state, state_sh = _sharded_model(data_dir)
  ev = evaluator.Evaluator(module, NUM_ITEMS, cfg.model.max_len, cfg.eval, mesh, state_sh["params"])
  ids = _batch(cfg, cfg.eval.batch_size)
  batch = sharding.put_batch({"inputs": ids[:, :-1], "target": ids[:, -1], "history": ids[:, :-1],
                              "weight": np.ones(len(ids), np.float32)}, mesh)
  candidates = np.ones(ev.vocab_size, bool)
  hlo = ev.batch_step.lower(state["params"], batch, candidates).compile().as_text()
  collectives = _collectives(hlo)
  assert collectives
  largest = cfg.eval.batch_size * cfg.model.max_len * cfg.model.embed_dim  # the input embedding lookup
  for op, n in collectives:
    assert n <= largest < cfg.eval.batch_size * ev.vocab_size // 4, (op, n)
  # and the counts merged over the devices give the single-device ranks
  sums, rank = ev.batch_step(state["params"], batch, candidates)
  scores = module.apply({"params": jax.device_get(state["params"])}, jnp.asarray(ids[:, :-1]), method="score_last")
  from xrec.evaluate import metrics
  want = metrics.target_rank(scores, jnp.asarray(ids[:, -1]), NUM_ITEMS, jnp.asarray(ids[:, :-1]))
  np.testing.assert_array_equal(np.asarray(rank), np.asarray(want))


def test_negatives_follow_the_sampling_distribution_in_vocab_memory():
  """Popularity negatives by inverse CDF: ids with no mass are never drawn, frequencies follow the
  probabilities, log q is each draw's own log-probability; and drawing 1,024 negatives over a
  20k-row vocab allocates O(vocab), not [negatives, vocab] (the Gumbel trick's 80 MB)."""
  probs = np.zeros(64, np.float32)
  probs[[1, 5, 6, 40]] = [0.1, 0.2, 0.3, 0.4]
  neg, log_q = jax.jit(lambda r: losses._draw_negatives(r, 20_000, 50, jnp.asarray(probs)))(jax.random.key(0))
  neg, log_q = np.asarray(neg), np.asarray(log_q)
  assert set(neg.tolist()) == {1, 5, 6, 40}
  for i, p in zip([1, 5, 6, 40], [0.1, 0.2, 0.3, 0.4]):
    assert abs((neg == i).mean() - p) < 0.015
    np.testing.assert_allclose(log_q[neg == i], np.log(p), rtol=1e-5)
  uniform, log_u = losses._draw_negatives(jax.random.key(1), 5000, 50)
  assert 1 <= int(uniform.min()) and int(uniform.max()) <= 50
  np.testing.assert_allclose(np.asarray(log_u), -np.log(50.0), rtol=1e-6)
  big = jnp.full((20_096,), 1.0 / 20_000)
  compiled = jax.jit(lambda r: losses._draw_negatives(r, 1024, 20_000, big)).lower(jax.random.key(0)).compile()
  assert compiled.memory_analysis().temp_size_in_bytes < 1024 * 20_096
