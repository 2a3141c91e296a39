"""Augmentation of scarce target data: pure functions of (seed, step, sequence), composable with any
strategy by config; the contrastive term over two views."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from xrec.data import augment, pipeline
from xrec.train import objectives
from xrec.train.loop import train_and_evaluate

SEQ = np.arange(1, 11)  # 10 items


def test_successors_by_co_occurrence():
  succ = augment.successors([[1, 2, 3], [1, 2], [1, 3], [4]], num_items=5)
  assert succ.tolist() == [0, 2, 3, 3, 4, 5]  # 1 -> 2 (twice) beats 1 -> 3; unseen items map to themselves


def _aug(**kw):
  return augment.Augmenter(ops=augment.OPS, mask_id=99, successor=np.arange(12) + 100, **kw)


def test_each_operation_by_hand():
  rng = lambda: np.random.default_rng(7)  # noqa: E731
  a = _aug(crop=0.6, mask=0.3, reorder=0.3, substitute=0.2, insert=0.2)
  crop = a.apply("crop", SEQ, rng())
  assert len(crop) == 6 and crop.tolist() == list(range(crop[0], crop[0] + 6))  # contiguous window
  mask = a.apply("mask", SEQ, rng())
  assert (mask == 99).sum() == 3 and (mask[mask != 99] == SEQ[mask != 99]).all()
  reorder = a.apply("reorder", SEQ, rng())
  changed = np.flatnonzero(reorder != SEQ)
  assert sorted(reorder.tolist()) == SEQ.tolist() and (len(changed) == 0 or changed.max() - changed.min() < 3)
  sub = a.apply("substitute", SEQ, rng())
  swapped = np.flatnonzero(sub != SEQ)
  assert len(swapped) == 2 and (sub[swapped] == SEQ[swapped] + 100).all()
  ins = a.apply("insert", SEQ, rng())
  assert len(ins) == 12 and [x for x in ins if x < 100] == SEQ.tolist()
  assert all(ins[i - 1] + 100 == ins[i] for i in range(1, 12) if ins[i] >= 100)  # successor right after
  assert a.apply("crop", np.array([5]), rng()).tolist() == [5]  # too short to change


def test_a_view_is_a_pure_function_of_its_key():
  a = _aug()
  assert a.view(SEQ, (0, 3, 5)).tolist() == a.view(SEQ, (0, 3, 5)).tolist()
  assert len({tuple(a.view(SEQ, (0, s, 5)).tolist()) for s in range(20)}) > 5  # other steps, other views
  with pytest.raises(ValueError, match=r"Unknown data.augment.ops \['shuffle'\]; valid: \['crop'"):
    augment.Augmenter(ops=("shuffle",))
  with pytest.raises(ValueError, match=r"data.augment.crop=0.0 must be in \(0, 1\]"):
    augment.Augmenter(ops=("crop",), crop=0.0)


def test_augmented_batches_are_a_function_of_seed_and_step(data_dir):
  c = tiny_config(data_dir)
  dom = pipeline.load_domain(c.data)
  aug = augment.Augmenter(ops=("crop", "mask", "reorder"), mask_id=0)
  a = pipeline.TrainBatches(dom, 8, 20, seed=1, augmenter=aug, augment_prob=0.5, views=True)
  b = pipeline.TrainBatches(dom, 8, 20, seed=1, augmenter=aug, augment_prob=0.5, views=True)
  later = b.batch(5)  # a fresh object, out of order: the same batch
  for key in ("inputs", "targets", "items", "view_a", "view_b"):
    np.testing.assert_array_equal(a.batch(5)[key], later[key])
  plain = pipeline.TrainBatches(dom, 8, 20, seed=1)
  assert not np.array_equal(a.batch(5)["view_a"], a.batch(5)["view_b"])
  assert not np.array_equal(a.batch(5)["inputs"], plain.batch(5)["inputs"])  # some examples augmented
  with pytest.raises(ValueError, match="need data.augment.ops"):
    pipeline.TrainBatches(dom, 8, 20, seed=1, views=True)


def test_contrastive_term_prefers_matching_views():
  from test_encoders import build, init
  module = build("sasrec")
  params = init(module)
  rng = np.random.default_rng(0)
  seqs = rng.integers(1, 31, (6, 6)).astype(np.int32)
  cfg = tiny_config("/tmp/unused").objective
  same = {"target": {"view_a": jnp.asarray(seqs), "view_b": jnp.asarray(seqs)}}
  other = {"target": {"view_a": jnp.asarray(seqs), "view_b": jnp.asarray(seqs[::-1].copy())}}

  def loss(batches):
    ctx = objectives.TermContext(module, params, batches, jax.random.key(0), 30, cfg.cl4srec)
    return float(objectives.cl4srec(ctx)[0])
  assert np.isfinite(loss(same)) and loss(same) < loss(other)


def test_augmentation_and_contrast_compose_with_a_strategy(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.data.augment.update(dict(ops=("crop", "mask", "substitute"), prob=0.5))
  c.objective.terms = (("full_softmax", 1.0), ("cl4srec", 0.1))
  r = train_and_evaluate(c, str(tmp_path / "aug"))
  rows = [json.loads(x) for x in open(tmp_path / "aug" / "metrics.jsonl") if '"train"' in x]
  assert all(np.isfinite(row["loss/cl4srec"]) and np.isfinite(row["loss/full_softmax"]) for row in rows)
  assert r["model"]["objective"] == [["full_softmax", 1.0], ["cl4srec", 0.1]]
  c.data.augment.ops = ()
  with pytest.raises(ValueError, match=r"contrast augmented views: set data.augment.ops"):
    train_and_evaluate(c, str(tmp_path / "noaug"))
