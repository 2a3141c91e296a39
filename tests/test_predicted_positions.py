"""Training batches list the positions that predict an item, and the next-item terms compute the
output head there only: the same loss and update as over the whole [batch, len] layout, with the
padding's share of the work gone (objectives.predicted_positions, TrainBatches.pack_targets)."""

import jax
import ml_collections
import optax
import numpy as np
import pytest

from conftest import tiny_config
from test_foundation_data import _ListSource
from xrec import models, sharding
from xrec.data import augment, pipeline
from xrec.train import loop, objectives, optimizer
from xrec.train.step import create_state, make_train_step


def _domain(num_users=53, num_items=40, seed=0):
  rng = np.random.default_rng(seed)
  # lengths from 4 (one training pair) to well above max_len (full windows)
  seqs = [rng.integers(1, num_items + 1, size=int(n)).tolist() for n in rng.integers(4, 14, size=num_users)]
  return pipeline.index_domain("d", _ListSource(seqs), [str(i) for i in range(num_items)])


def test_one_capacity_per_run_holds_every_block_and_positions_cover_every_target():
  dom, steps = _domain(), 25
  batches = pipeline.TrainBatches(dom, batch_size=8, max_len=12, seed=3)
  capacity = batches.pack_targets(shards=2, num_steps=steps, multiple=1)
  counts = [int((b["targets"].reshape(2, -1) > 0).sum(1).max()) for b in map(batches.batch, range(steps))]
  # the lengths bound each window exactly here, so the capacity is the fullest block of the run
  assert capacity == max(counts) < 4 * 12
  for step in range(steps):
    batch = batches.batch(step)
    blocks = batch["targets"].reshape(2, -1)
    assert batch["positions"].shape == (2, capacity)
    for block, pos in zip(blocks, batch["positions"]):
      assert np.all(np.diff(pos) > 0)  # sorted and distinct
      assert set(np.flatnonzero(block > 0)) <= set(pos.tolist())
  # rounded up to a multiple; a resumed run (a fresh object) and each of two processes choose the same
  again = pipeline.TrainBatches(dom, 8, 12, seed=3)
  assert again.pack_targets(2, steps, multiple=8) == -(-capacity // 8) * 8
  halves = [pipeline.TrainBatches(dom, 8, 12, 3, process_index=i, process_count=2) for i in range(2)]
  assert {h.pack_targets(2, steps, multiple=8) for h in halves} == {again.packing[1]}
  np.testing.assert_array_equal(np.concatenate([h.batch(7)["positions"] for h in halves]),
                                again.batch(7)["positions"])
  # a run too long to list bounds its blocks by the fullest any order can form
  bound = int(np.sort(np.clip(dom.lengths[batches.users] - 3, 0, 12))[-4:].sum())
  assert pipeline.TrainBatches(dom, 8, 12, seed=3).pack_targets(2, steps, multiple=1, max_rows=8) == bound
  # no saving (a window as long as max_len in every row), or windows built otherwise: no positions
  full = pipeline.TrainBatches(dom, 8, 2, seed=3)
  assert full.pack_targets(2, steps) is None and "positions" not in full.batch(0)
  augment_cfg = tiny_config("").data.augment
  augment_cfg.ops = ("crop",)
  aug = augment.from_config(augment_cfg, 0, (dom.sequence(u)[:-2] for u in dom.train_users), dom.num_items)
  augmented = pipeline.TrainBatches(dom, 8, 12, 3, augmenter=aug, augment_prob=0.5)
  assert augmented.pack_targets(2, steps) is None


def test_a_block_above_the_capacity_is_refused():
  targets = np.array([[0, 3, 4], [0, 0, 7]], np.int32)
  np.testing.assert_array_equal(pipeline.target_positions(targets, 2, 2), [[1, 2], [0, 2]])
  with pytest.raises(ValueError, match="3 predicted positions, above the capacity 2"):
    pipeline.target_positions(np.array([[1, 3, 4]]), 1, 2)


@pytest.mark.parametrize("term", ["full_softmax", "chunked_softmax", "source_full_softmax"])
def test_a_step_on_the_predicted_positions_equals_the_step_on_the_whole_batch(term):
  cfg = tiny_config("")
  cfg.model.dropout = 0.0
  cfg.mesh.data, cfg.mesh.model = 2, 2
  cfg.objective.terms = ((term, 1.0),)
  cfg.objective.chunked_softmax.chunk_size = 64
  dom, max_len = _domain(num_items=200, seed=1), cfg.model.max_len
  streams = {"target": pipeline.TrainBatches(dom, cfg.train.batch_size, max_len, 0)}
  if term.startswith("source"):
    streams["source"] = pipeline.TrainBatches(_domain(num_items=200, seed=2), cfg.train.batch_size, max_len, 1)
  for stream in streams.values():
    assert stream.pack_targets(2, 4, multiple=16) <= 0.6 * cfg.train.batch_size // 2 * max_len
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding.rules)
  module = models.build(cfg.model, dom.num_items, max_len)
  objective = objectives.assemble(cfg.objective, module.causal, tuple(streams))
  tx, _ = optimizer.make_optimizer(cfg.optim, 10)
  rng = jax.random.key(0)

  def run(packed: bool):
    state, state_sh = create_state(module, tx, max_len, 0, mesh, rules)
    step = make_train_step(module, tx, objective, dom.num_items, state_sh, mesh,
                                vocab_shards=sharding.axis_shards(mesh, rules, "vocab"))
    losses, grads, flops = [], None, None
    for s in range(3):
      batches = {k: v.batch(s) for k, v in streams.items()}
      if not packed:
        batches = {k: {f: x for f, x in b.items() if f != "positions"} for k, b in batches.items()}
      batches = sharding.put_batch(batches, mesh)
      if grads is None:
        cost = step.lower(state, batches, rng).compile().cost_analysis()
        flops = (cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"]
        grads = jax.device_get(jax.jit(jax.grad(lambda p: objective.loss(
            module, p, batches, rng, dom.num_items, vocab_shards=sharding.axis_shards(mesh, rules, "vocab"))[0]))(
                state["params"]))
      state, stats = step(state, batches, rng)
      losses.append(float(stats["loss"]))
    return losses, grads, flops

  (want, want_grads, full_flops), (got, got_grads, packed_flops) = run(False), run(True)
  np.testing.assert_allclose(got, want, rtol=1e-5)  # three steps: the same loss curve
  for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6 * float(np.abs(w).max()))
  if term != "chunked_softmax":  # XLA counts no FLOPs inside the chunked scan's loop body
    assert packed_flops < 0.9 * full_flops, (packed_flops, full_flops)


def test_a_run_feeds_its_steps_the_predicted_positions(data_dir, tmp_path, monkeypatch):
  cfg = tiny_config(data_dir)
  cfg.train.update(dict(num_steps=2, eval_every_steps=2, checkpoint_every_steps=2))
  fed, put = [], sharding.put_batch

  def spy(batches, mesh):
    if isinstance(batches.get("target"), dict):  # a training step's streams (not an evaluation batch)
      fed.append({k: (set(b), b["targets"]) for k, b in batches.items()})
    return put(batches, mesh)
  monkeypatch.setattr(loop.sharding, "put_batch", spy)
  loop.train_and_evaluate(cfg, str(tmp_path / "run"))
  assert len(fed) == 2
  for step in fed:
    fields, targets = step["target"]
    assert "positions" in fields and (targets > 0).mean() < 0.9  # tiny synthetic windows hold padding


def test_the_learning_rate_and_the_budget_are_inputs_of_the_compiled_step():
  """Runs that differ only in optim.lr (a grid's candidates) or in their step budget compile one
  program (shared through the compilation cache), and the rate still scales the update: Adam's
  first step moves every weight by about lr * (sign(g) + decay * w), so doubling the rate doubles
  the step; the schedule inside the step is optax's warmup-cosine (or warmup-constant) at the peak."""
  cfg = tiny_config("")
  cfg.model.dropout = 0.0
  cfg.optim.update(dict(warmup_fraction=0.0, weight_decay=0.1))
  dom, max_len = _domain(num_items=40, seed=4), cfg.model.max_len
  batches = pipeline.TrainBatches(dom, cfg.train.batch_size, max_len, 0)
  mesh, rules = sharding.make_mesh(cfg.mesh), sharding.logical_rules(cfg.sharding.rules)
  module = models.build(cfg.model, dom.num_items, max_len)
  objective = objectives.assemble(cfg.objective, module.causal)
  batch, rng = sharding.put_batch({"target": batches.batch(0)}, mesh), jax.random.key(0)
  texts, moves = {}, {}
  for lr, steps in ((1e-3, 10), (2e-3, 10), (1e-3, 37)):
    cfg.optim.lr = lr
    tx = optimizer.runtime(cfg.optim, steps)
    state, state_sh = create_state(module, tx.tx, max_len, 0, mesh, rules)
    before = jax.device_get(state["params"])
    step = make_train_step(module, tx, objective, dom.num_items, state_sh, mesh, num_steps=steps)
    texts[lr, steps] = step.lower(state, batch, rng).as_text()
    state, _ = step(state, batch, rng)
    moves[lr, steps] = jax.tree.map(lambda a, b: np.asarray(a) - np.asarray(b), jax.device_get(state["params"]),
                                    before)
  assert texts[1e-3, 10] == texts[2e-3, 10] == texts[1e-3, 37]
  assert "0.001" not in texts[1e-3, 10] and "1.000000e-03" not in texts[1e-3, 10]
  for small, large in zip(jax.tree.leaves(moves[1e-3, 10]), jax.tree.leaves(moves[2e-3, 10])):
    assert np.abs(small).max() > 0
    # to the rounding of the weights (float32 near 1.0: 1.2e-7); the smallest moves (decay alone) are 2e-6
    np.testing.assert_allclose(large, 2 * small, rtol=1e-3, atol=2.5e-7)
  counts = np.arange(14)
  for schedule, warmup, reference in (
      ("cosine", 0.2, optax.warmup_cosine_decay_schedule(0.0, 3e-3, 2, 10, 3e-4)),
      ("cosine", 0.0, optax.cosine_decay_schedule(3e-3, 10, 0.1)),
      ("constant", 0.3, optax.join_schedules([optax.linear_schedule(0.0, 3e-3, 3), optax.constant_schedule(3e-3)],
                                             [3]))):
    cfg.optim.update(dict(lr=3e-3, warmup_fraction=warmup, end_lr_factor=0.1, schedule=schedule))
    ours = optimizer.learning_rate_schedule(cfg.optim, 10)
    np.testing.assert_allclose([float(ours(c)) for c in counts], [float(reference(c)) for c in counts], rtol=2e-6,
                               err_msg=f"{schedule} warmup {warmup}")
    jitted = jax.jit(lambda c, v: optimizer.learning_rate_schedule(cfg.optim, 10, v)(c))
    values = optimizer.schedule_values(cfg.optim, 10)
    np.testing.assert_allclose([float(jitted(c, values)) for c in counts], [float(ours(c)) for c in counts], rtol=1e-7)
  # inside the step, bit for bit the rates of the step before the budget was an input (optax's
  # schedule at peak 1 with the step counts as constants, which XLA folds, times the traced peak):
  # a one-ulp difference at some steps changed a real pretraining's curve
  for warmup, total, end in ((431, 4310, 0.0), (10, 40, 0.0), (2, 10, 0.1), (0, 150, 0.0), (45, 450, 0.05)):
    cfg.optim.update(dict(schedule="cosine", end_lr_factor=end, warmup_fraction=warmup / total))
    inside = jax.jit(lambda c, v, o=cfg.optim.to_dict(): optimizer.learning_rate_schedule(
        ml_collections.ConfigDict(o), 0, v)(c))
    shape = optax.warmup_cosine_decay_schedule(0.0, 1.0, warmup, total, end)
    before = jax.jit(lambda c, lr, shape=shape: lr * shape(c))
    values = optimizer.schedule_values(cfg.optim, total)
    assert values["warmup"] == warmup
    for lr in (1e-3, 9e-3):
      values["lr"] = np.float32(lr)
      got = np.array([np.asarray(inside(np.int32(c), values)) for c in range(total + 2)])
      want = np.array([np.asarray(before(np.int32(c), np.float32(lr))) for c in range(total + 2)])
      assert (got == want).all(), (warmup, total, lr, np.nonzero(got != want)[0][:5])
