"""Overlapping-user models: the inputs read each user's source history without leakage, the model
embeds the non-target ids through its own parts, and a pretrain -> transfer run trains both modes."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_encoders import KEYS, NUM_ITEMS, bound, init, perturbed
from xrec.data import cross_user, pipeline
from xrec.models import common
from xrec.train import runner

OFFSET = 40  # a target vocab of 40 ids: source ids appear as 40 + s


def _domain(name, users, seqs, stamps):
  source = [{"user_key": k, "items": np.asarray(q, np.int64), "timestamps": np.asarray(t, np.int64)}
            for k, q, t in zip(users, seqs, stamps)]
  return pipeline.index_domain(name, source, [f"{name}{i}" for i in range(30)])


def _pair():
  target = _domain("target", ["alice", "bob"], [[1, 2, 3, 4, 5], [6, 7, 8, 9]],
                   [[10, 20, 30, 40, 50], [10, 20, 30, 40]])
  source = _domain("source", ["carol", "alice"], [[1, 2, 3], [11, 12, 13, 14, 15]],
                   [[1, 2, 3], [5, 25, 30, 45, 55]])
  return target, source


def test_merged_inputs_are_chronological_and_never_read_the_future():
  target, source = _pair()
  cross = cross_user.CrossUserInputs(target, source, "merged", OFFSET, max_len=8)
  assert cross.report["shared_users"] == 1 and cross.report["users_with_source_history"] == 1
  assert cross.report["user_overlap"] == 0.5
  ex = cross.train_example(0, max_len=8)  # alice: train part 1, 2, 3 (t = 10..30); source strictly before t = 30
  # merged: s11@5, 1@10, 2@20, s12@25, 3@30 (s13@30 is not older than the last training item)
  merged = [OFFSET + 11, 1, 2, OFFSET + 12, 3]
  np.testing.assert_array_equal(ex["inputs"][-4:], merged[:-1])
  np.testing.assert_array_equal(ex["targets"][-4:], [1, 2, 3, 3])  # the next TARGET item
  assert (ex["inputs"][:-4] == 0).all() and (ex["targets"][:-4] == 0).all()
  # validation predicts 4 (t = 40): source items before t = 40, the target first at equal times (3@30, s13@30)
  valid = [OFFSET + 11, 1, 2, OFFSET + 12, 3, OFFSET + 13]
  np.testing.assert_array_equal(cross.eval_inputs(0, -2, 8)[-6:], valid)
  # test predicts 5 (t = 50): + 4@40 and s14@45, never s15@55
  np.testing.assert_array_equal(cross.eval_inputs(0, -1, 8), valid + [4, OFFSET + 14])
  # bob has no source history: the plain target input
  np.testing.assert_array_equal(cross.train_example(1, 8)["inputs"], pipeline.train_example(target.sequence(1), 8)["inputs"])
  np.testing.assert_array_equal(cross.eval_inputs(1, -1, 8), pipeline.eval_example(target.sequence(1), "test", 8, 8)["inputs"])


def test_prefix_token_precedes_the_target_items_of_users_with_a_source_history():
  target, source = _pair()
  cross = cross_user.CrossUserInputs(target, source, "prefix", OFFSET, max_len=5)
  # training reads the source before the window's first item (1@10), evaluation before the validation item (t = 40)
  np.testing.assert_array_equal(cross.prefix_history(0, "train"), [11])
  np.testing.assert_array_equal(cross.prefix_history(0, "eval"), [11, 12, 13])
  assert (cross.prefix_row(0, "train"), cross.prefix_row(0, "eval"), cross.prefix_rows) == (1, 2, 5)
  ex = cross.train_example(0, max_len=5)
  np.testing.assert_array_equal(ex["inputs"], [0, 0, OFFSET + 1, 1, 2])
  np.testing.assert_array_equal(ex["targets"], [0, 0, 1, 2, 3])  # the token predicts the first item
  np.testing.assert_array_equal(cross.eval_inputs(0, -1, 5), [OFFSET + 2, 1, 2, 3, 4])
  np.testing.assert_array_equal(cross.eval_inputs(0, -2, 5), [0, OFFSET + 2, 1, 2, 3])
  np.testing.assert_array_equal(cross.eval_inputs(1, -1, 5), [0, 0, 6, 7, 8])  # bob: no token
  late = _domain("source", ["alice"], [[1, 2, 3]], [[45, 46, 47]])  # only after alice's validation item
  assert cross_user.CrossUserInputs(target, late, "prefix", OFFSET, 5).report["users_with_source_history"] == 0
  none = _domain("source", ["zed"], [[1, 2, 3]], [[1, 2, 3]])
  with pytest.raises(ValueError, match=r"none of the 2 users of domain 'target' is among the 1 users"):
    cross_user.CrossUserInputs(target, none, "prefix", OFFSET, 5)
  with pytest.raises(ValueError, match=r"Unknown transfer.cross_user.mode 'both'; valid: \['merged', 'prefix'\]"):
    cross_user.CrossUserInputs(target, source, "both", OFFSET, 5)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "nextitnet"])
@pytest.mark.parametrize("mode", ["merged", "prefix"])
def test_non_target_ids_are_embedded_by_the_cross_parts(name, mode):
  rows = 32 if mode == "merged" else 12  # merged: the pretrained model's vocab
  encoder, module, plan = bound(name, "cross_user", **{"cross_user.mode": mode, "cross_user.rows": rows,
                                                        "cross_user.source_dim": 5})
  pretrained = perturbed(init(encoder, seed=1))
  assert encoder.vocab_size == 32
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  flat = common.flatten(params)
  if mode == "merged":  # a copy of the pretrained item table reads the source items
    np.testing.assert_allclose(flat["cross/source_embed/embedding"], pretrained["item_embed"]["embedding"])
  else:
    assert flat["cross/user_table"].shape == (12, 5)
    params["cross"]["user_table"] = np.random.default_rng(0).normal(size=(12, 5)).astype(np.float32)
  from xrec.transfer import schedule as schedules
  lrs = schedules.resolve(params, plan.schedule)
  assert lrs.get("cross/user_table", None) is None and lrs["item_embed/embedding"] == 1.0
  v = encoder.vocab_size
  plain = jnp.array([[0, 0, 3, 5, 7, 9]], jnp.int32)
  with_other = jnp.array([[0, v + 2, 3, 5, 7, 9]], jnp.int32)
  want = encoder.apply({"params": pretrained}, plain, method="score_last")
  got_plain = module.apply({"params": params}, plain, method="score_last")
  got_other = module.apply({"params": params}, with_other, method="score_last")
  items = slice(1, NUM_ITEMS + 1)
  np.testing.assert_allclose(got_plain[:, items], want[:, items], rtol=1e-5, atol=1e-5)  # target-only: the pretrained model
  assert not np.allclose(got_other, got_plain, atol=1e-4)  # the extra token changes the scores
  # the extra id reads its own row: another row gives other scores
  other_row = module.apply({"params": params}, jnp.array([[0, v + 3, 3, 5, 7, 9]], jnp.int32), method="score_last")
  assert not np.allclose(other_row, got_other, atol=1e-5)


def test_cross_user_runs_read_source_histories_and_need_shared_users(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.data.synthetic.scenario = "cross_platform"
  c.data.synthetic.user_overlap = 0.5
  c.experiment.mode = "pretrain_transfer"
  c.experiment.strategies = ("cross_user",)
  c.experiment.pretrain.train.update(dict(num_epochs=2.0, batch_size=16, eval_every_steps=5,
                                          checkpoint_every_steps=5))
  c.train.num_steps = 4
  c.train.eval_every_steps = 2
  for mode in ("merged", "prefix"):
    c.transfer.cross_user.mode = mode
    wd = str(tmp_path / mode)
    assert runner.run_study(c, runner.implicit_study(c), wd)["failed"] == 0
    run = runner.read_runs(wd)[0]
    with open(os.path.join(wd, "stages", run["stages"]["transfer"], "results.json")) as f:
      result = json.load(f)
    report = result["transfer"]["cross_user"]
    assert report["mode"] == mode and report["shared_users"] == 30
    assert 0 < report["users_with_source_history"] <= 30 and report["user_overlap"] <= 0.5
    assert 0.0 <= result["test"]["ndcg@10"] <= 1.0 and result["protocol"]["population"]["users"] == 60
  # no shared users: a clear error
  c.data.synthetic.user_overlap = 0.0
  failed = runner.run_study(c, runner.implicit_study(c), str(tmp_path / "disjoint"))
  assert failed["failed"] == 1
  errors = [r.get("error", "") for r in runner.read_runs(str(tmp_path / "disjoint"))]
  assert any("need users present in both domains" in e for e in errors), errors
