"""Synthesis of pseudo-interactions (ASReP-style): which users, which items, which direction, and
what the training windows and evaluation inputs then read."""

import ml_collections
import numpy as np
import pytest

from conftest import tiny_config
from test_encoders import NUM_ITEMS, build, init, perturbed
from xrec.data import pipeline
from xrec.train import synthesis
from xrec.train.loop import train_and_evaluate

KEYS = [f"i{i}" for i in range(NUM_ITEMS)]


def _domain(seqs):
  source = [{"user_key": f"u{i}", "items": np.asarray(q, np.int64), "timestamps": np.arange(len(q), dtype=np.int64)}
            for i, q in enumerate(seqs)]
  return pipeline.index_domain("target", source, KEYS)


def _cfg(**fields):
  c = ml_collections.ConfigDict(dict(num_items=3, min_len=4, confidence=0.0, direction="forward", model=""))
  c.update(fields)
  return c


SEQS = [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11, 12, 13], [14, 15, 16]]  # train parts of 3, 6 and 1 items


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_short_users_get_new_items_on_one_side(direction):
  module = build("sasrec")
  params = perturbed(init(module), seed=5)
  domain = _domain(SEQS)
  pseudo, report = synthesis.generate(module, params, KEYS, domain, _cfg(direction=direction))
  assert sorted(pseudo) == [0, 2] and report["short_users"] == 2 and report["items_added"] == 6  # user 1 is long
  for u, (before, after) in pseudo.items():
    added = before if direction == "backward" else after
    assert len(added) == 3 and len(before if direction == "forward" else after) == 0
    assert len(set(added.tolist())) == 3 and not set(added.tolist()) & set(SEQS[u][:-2])  # new, distinct items
    assert all(1 <= i <= NUM_ITEMS for i in added)
  again, _ = synthesis.generate(module, params, KEYS, domain, _cfg(direction=direction))
  assert all(np.array_equal(np.concatenate(again[u]), np.concatenate(pseudo[u])) for u in pseudo)  # deterministic
  # the training window reads them; the evaluation input only those generated before the history
  lengthened = dataclasses_replace(domain, pseudo)
  window = pipeline.TrainBatches(lengthened, 3, 8, 0).example(0, 0)
  user = pipeline.TrainBatches(lengthened, 3, 8, 0)._user(0)
  np.testing.assert_array_equal(lengthened.train_part(user), np.concatenate([pseudo.get(user, ([], []))[0],
                                                                             SEQS[user][:-2],
                                                                             pseudo.get(user, ([], []))[1]]))
  assert (window["items"][window["items"] > 0] == lengthened.train_part(user)[-8:]).all()
  batch = next(pipeline.eval_batches(lengthened, "test", 4, 8))
  want = np.concatenate([pseudo[0][0], SEQS[0][:-1]])  # backward: pseudo-prior items first
  np.testing.assert_array_equal(batch["inputs"][0][-len(want):], want)


def dataclasses_replace(domain, pseudo):
  import dataclasses
  return dataclasses.replace(domain, pseudo=pseudo)


def test_confidence_threshold_and_bad_options():
  module = build("sasrec")
  params = perturbed(init(module), seed=5)
  pseudo, report = synthesis.generate(module, params, KEYS, _domain(SEQS), _cfg(confidence=0.99))
  assert pseudo == {} and report["items_added"] == 0  # no item is that likely among 25 candidates
  with pytest.raises(ValueError, match=r"Unknown data.synthesis.direction 'sideways'; valid: \['backward', 'forward'\]"):
    synthesis.check(_cfg(direction="sideways"))
  with pytest.raises(ValueError, match=r"data.synthesis.confidence=1.0 must be in \[0, 1\)"):
    synthesis.check(_cfg(confidence=1.0))
  with pytest.raises(ValueError, match=r"the generator knows none of the target's items"):
    synthesis.generate(module, params, [f"x{i}" for i in range(NUM_ITEMS)], _domain(SEQS), _cfg())


def test_reversed_domain_predicts_the_previous_item_and_never_reads_the_held_out_items():
  domain = pipeline.reversed_domain(_domain(SEQS))
  np.testing.assert_array_equal(domain.sequence(0), [3, 2, 1])  # 4 (valid) and 5 (test) are never read
  np.testing.assert_array_equal(domain.sequence(1), [11, 10, 9, 8, 7, 6])
  assert domain.item_frequency[3] == 1 and domain.item_frequency[1] == 0  # the oldest items are its own held-out ones
  assert domain.item_frequency[4] == domain.item_frequency[5] == 0
  assert list(domain.train_users) == [0, 1] and list(domain.eval_users) == [0, 1]  # user 2 has 1 training item


def test_backward_synthesis_run_with_a_reversed_generator(data_dir, tmp_path):
  gen = tiny_config(data_dir)
  gen.data.domain = "target"
  gen.data.reverse = True
  train_and_evaluate(gen, str(tmp_path / "reversed"))
  c = tiny_config(data_dir)
  c.data.domain = "target"
  c.data.synthesis.update(dict(num_items=2, min_len=15, model=str(tmp_path / "reversed")))
  r = train_and_evaluate(c, str(tmp_path / "lengthened"))
  report = r["transfer"]["synthesis"]
  assert report["users_lengthened"] > 0 and report["items_added"] <= 2 * report["users_lengthened"]
  c.data.synthesis.direction = "backward"
  forward = tiny_config(data_dir)
  forward.data.domain = "target"
  train_and_evaluate(forward, str(tmp_path / "forward"))
  c.data.synthesis.model = str(tmp_path / "forward")
  with pytest.raises(ValueError, match=r"direction='backward' needs a generator trained on time-reversed"):
    train_and_evaluate(c, str(tmp_path / "wrong"))
  c.data.synthesis.update(dict(model=str(tmp_path / "reversed"), direction="forward"))
  with pytest.raises(ValueError, match=r"direction='forward' needs a generator trained forwards; .* was trained backwards"):
    train_and_evaluate(c, str(tmp_path / "wrong_way"))
  c.data.synthesis.model = ""
  with pytest.raises(ValueError, match=r"data.synthesis.num_items > 0 needs a generator"):
    train_and_evaluate(c, str(tmp_path / "none"))
