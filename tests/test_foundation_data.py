"""Synthetic generator, TFDS builder, leave-one-out splits, few-shot subsets, batches."""

import dataclasses

import numpy as np
import pytest

from xrec.data import builders, pipeline, synthetic

SMALL = dict(num_source_users=80, num_target_users=60, num_source_items=150, num_target_items=120,
             mean_seq_len=10.0, max_seq_len=25)


def test_generator_is_deterministic_by_seed():
  spec = synthetic.SyntheticSpec.for_scenario("cross_region", **SMALL)
  a, b = synthetic.generate(spec), synthetic.generate(spec)
  for dom in ("source", "target"):
    assert a[dom].user_keys == b[dom].user_keys and a[dom].item_keys == b[dom].item_keys
    for x, y in zip(a[dom].sequences, b[dom].sequences):
      np.testing.assert_array_equal(x, y)
  c = synthetic.generate(synthetic.SyntheticSpec.for_scenario("cross_region", seed=1, **SMALL))
  assert any(len(x) != len(y) or (x != y).any() for x, y in zip(a["source"].sequences, c["source"].sequences))


@pytest.mark.parametrize("scenario,users_shared,items_shared", [
    ("cross_platform", "all", "all"),
    ("cross_region", 0, "all"),
    ("cross_app", 30, 0),
])
def test_scenarios_have_configured_overlaps(scenario, users_shared, items_shared):
  knobs = dict(SMALL)
  if scenario == "cross_platform":  # same users and items: equal sizes
    knobs.update(num_target_users=80, num_target_items=150)
  d = synthetic.generate(synthetic.SyntheticSpec.for_scenario(scenario, **knobs))
  src, tgt = d["source"], d["target"]
  shared_u = len(set(src.user_keys) & set(tgt.user_keys))
  shared_i = len(set(src.item_keys) & set(tgt.item_keys))
  assert shared_u == (len(tgt.user_keys) if users_shared == "all" else users_shared)
  assert shared_i == (len(tgt.item_keys) if items_shared == "all" else items_shared)
  for dom in (src, tgt):
    for seq, ts in zip(dom.sequences, dom.timestamps):
      assert len(set(seq.tolist())) == len(seq), "users never repeat an item"
      assert seq.min() >= 1 and seq.max() <= len(dom.item_keys)
      assert (np.diff(ts) >= 0).all() and len(seq) >= 5


def test_partial_item_overlap_and_sequence_lengths():
  spec = synthetic.SyntheticSpec(item_overlap=0.25, user_overlap=0.0, min_seq_len=6, mean_seq_len=9,
                                 max_seq_len=15, **{k: v for k, v in SMALL.items() if "seq" not in k})
  d = synthetic.generate(spec)
  assert len(set(d["source"].item_keys) & set(d["target"].item_keys)) == 30  # 0.25 * 120
  lengths = np.array([len(s) for s in d["target"].sequences])
  assert lengths.min() >= 6 and lengths.max() <= 15


def test_shift_moves_target_transitions_away_from_source():
  """With shift 0 a source bigram predicts target sequences far better than with shift 1."""
  def bigram_agreement(shift):
    spec = synthetic.SyntheticSpec.for_scenario("cross_region", shift=shift, **SMALL)
    d = synthetic.generate(spec)
    pairs = lambda dom: {(dom.item_keys[a - 1], dom.item_keys[b - 1]) for s in dom.sequences
                         for a, b in zip(s[:-1], s[1:])}
    src, tgt = pairs(d["source"]), pairs(d["target"])
    return len(src & tgt) / len(tgt)
  assert bigram_agreement(0.0) > 2 * bigram_agreement(1.0)


def test_invalid_knobs_fail_with_names():
  with pytest.raises(ValueError, match="user_overlap"):
    synthetic.SyntheticSpec(user_overlap=1.5)
  with pytest.raises(ValueError, match="valid: .*cross_app"):
    synthetic.SyntheticSpec.for_scenario("cross_galaxy")


def test_tfds_builder_roundtrip(data_dir):
  cfg = builders.synthetic_config("cross_app", **SMALL)
  b = builders.SyntheticXdomain(config=cfg, data_dir=data_dir)
  b.download_and_prepare(file_format="array_record")
  sources = b.as_data_source()
  assert sorted(sources) == ["source", "target"]
  assert len(sources["source"]) == 80 and len(sources["target"]) == 60
  meta = b.info.metadata
  assert len(meta["item_keys"]["target"]) == 120
  assert meta["statistics"]["overlap"]["source~target"] == {"shared_users": 30, "shared_items": 0}
  rec = sources["target"][0]
  assert rec["items"].dtype == np.int64 and rec["items"].ndim == 1
  # a different knob names a different dataset on disk
  assert builders.synthetic_config("cross_app", **{**SMALL, "shift": 0.5}).name != cfg.name


class _ListSource:
  def __init__(self, seqs):
    self.seqs = seqs

  def __len__(self):
    return len(self.seqs)

  def __getitem__(self, i):
    return {"user_key": f"u{i}".encode(), "items": np.asarray(self.seqs[i], np.int64),
            "timestamps": np.arange(len(self.seqs[i]), dtype=np.int64)}


def test_leave_one_out_examples():
  seq = np.array([5, 6, 7, 8, 9, 10])
  tr = pipeline.train_example(seq, max_len=4)
  np.testing.assert_array_equal(tr["inputs"], [0, 5, 6, 7])
  np.testing.assert_array_equal(tr["targets"], [0, 6, 7, 8])
  va = pipeline.eval_example(seq, "valid", max_len=3, max_history=8)
  assert va["target"] == 9
  np.testing.assert_array_equal(va["inputs"], [6, 7, 8])
  np.testing.assert_array_equal(va["history"], [0, 0, 0, 0, 5, 6, 7, 8])
  te = pipeline.eval_example(seq, "test", max_len=3, max_history=8)
  assert te["target"] == 10
  np.testing.assert_array_equal(te["inputs"], [7, 8, 9])
  # a long sequence: the window keeps the most recent items
  long = np.arange(1, 31)
  np.testing.assert_array_equal(pipeline.train_example(long, 5)["targets"], [24, 25, 26, 27, 28])


def test_few_shot_subsets_are_nested_and_sized():
  keys = [f"user{i}" for i in range(1000)]
  prev = None
  for fraction in (0.05, 0.1, 0.2, 0.5, 1.0):
    sel = set(pipeline.select_fraction(1000, keys, fraction, seed=3).tolist())
    assert len(sel) == round(fraction * 1000)
    if prev is not None:
      assert prev <= sel
    prev = sel
  other = set(pipeline.select_fraction(1000, keys, 0.1, seed=4).tolist())
  assert other != set(pipeline.select_fraction(1000, keys, 0.1, seed=3).tolist())


def test_bad_sequences_fail_clearly():
  with pytest.raises(ValueError, match="empty sequence"):
    pipeline.index_domain("d", _ListSource([[1, 2, 3], []]), ["a", "b", "c"])
  with pytest.raises(ValueError, match="needs >= 3"):
    pipeline.index_domain("d", _ListSource([[1, 2]]), ["a", "b", "c"])
  with pytest.raises(ValueError, match=r"outside the valid range \[1, 3\]"):
    pipeline.index_domain("d", _ListSource([[1, 2, 4]]), ["a", "b", "c"])


def test_train_batches_are_a_function_of_step():
  seqs = [list(range(1, 2 + (i % 7) + 4)) for i in range(37)]
  dom = pipeline.index_domain("d", _ListSource(seqs), [str(i) for i in range(20)])
  a = pipeline.TrainBatches(dom, batch_size=8, max_len=6, seed=0)
  b = pipeline.TrainBatches(dom, batch_size=8, max_len=6, seed=0)
  later = [b.batch(s) for s in (9, 3)]  # out of order, fresh object
  np.testing.assert_array_equal(a.batch(3)["inputs"], later[1]["inputs"])
  np.testing.assert_array_equal(a.batch(9)["targets"], later[0]["targets"])
  streamed = list(a.iterate(2, 6))
  assert len(streamed) == 4
  np.testing.assert_array_equal(streamed[1]["inputs"], a.batch(3)["inputs"])
  # each epoch visits every training user once
  users = [a._user(p) for p in range(len(a.users))]
  assert sorted(users) == sorted(a.users.tolist())
  # two processes split each global batch
  p0 = pipeline.TrainBatches(dom, 8, 6, 0, process_index=0, process_count=2).batch(5)
  p1 = pipeline.TrainBatches(dom, 8, 6, 0, process_index=1, process_count=2).batch(5)
  np.testing.assert_array_equal(np.concatenate([p0["inputs"], p1["inputs"]]), a.batch(5)["inputs"])


def test_sequences_come_from_the_in_memory_store_exactly_as_from_the_records():
  seqs = [list(range(1, 4 + (i % 9))) + [2 + i % 5] for i in range(41)]
  dom = pipeline.index_domain("d", _ListSource(seqs), [str(i) for i in range(20)])
  assert dom.items is not None and dom.items.dtype == np.int32 and len(dom.items) == sum(map(len, seqs))
  by_record = dataclasses.replace(dom, items=None, offsets=None)  # the per-record path
  for u, seq in enumerate(seqs):
    np.testing.assert_array_equal(dom.sequence(u), seq)
    np.testing.assert_array_equal(by_record.sequence(u), seq)
    assert dom.sequence(u).dtype == by_record.sequence(u).dtype == np.int64
  # item frequency counts training parts only (each user's last two items are held out)
  expected = np.bincount(np.concatenate([s[:-2] for s in seqs]), minlength=21)
  np.testing.assert_array_equal(dom.item_frequency, expected)
  a, b = pipeline.TrainBatches(dom, 8, 6, 0), pipeline.TrainBatches(by_record, 8, 6, 0)
  for step in (0, 7):
    for k, v in a.batch(step).items():
      np.testing.assert_array_equal(v, b.batch(step)[k])


def test_eval_batches_pad_with_zero_weight():
  seqs = [[1, 2, 3, 4]] * 5
  dom = pipeline.index_domain("d", _ListSource(seqs), ["a", "b", "c", "d"])
  batches = list(pipeline.eval_batches(dom, "test", batch_size=4, max_len=3))
  assert len(batches) == 2
  assert batches[1]["weight"].tolist() == [1.0, 0.0, 0.0, 0.0]
  assert batches[0]["target"].tolist() == [4, 4, 4, 4]


_PREPARE = """
import os, sys, time
from xrec.defaults import base_config
from xrec.data import pipeline
c = base_config().data
c.data_dir = sys.argv[1]
c.synthetic.update(dict(num_source_users=600, num_target_users=600, num_source_items=300, num_target_items=300))
open(os.path.join(sys.argv[2], sys.argv[3]), "w").close()
while len(os.listdir(sys.argv[2])) < 2:  # both processes start preparing at the same moment
  time.sleep(0.01)
b = pipeline.prepare_builder(c)
print(len(b.as_data_source()["target"]))
"""


def test_two_processes_preparing_one_new_dataset_at_once_both_get_it(tmp_path):
  """Two studies (or two jobs of one study) that need the same dataset, first use, same moment:
  one prepares it, the other waits and reads it (before the lock, the second's rename of its own
  copy failed with FileExistsError and its cell failed)."""
  import subprocess
  import sys
  ready = tmp_path / "ready"
  ready.mkdir()
  procs = [subprocess.Popen([sys.executable, "-c", _PREPARE, str(tmp_path / "data"), str(ready), f"p{i}"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-2000:]
    assert out.strip().splitlines()[-1] == "600"
