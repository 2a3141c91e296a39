"""L2-SP through the runtime hooks (xrec/train/hooks/l2sp.py): the penalty's value, that it changes
what trains (fine-tuned weights stay nearer the pretrained ones than plain full fine-tuning's), and
that its starting point is train state that a resumed run restores (not where it resumed)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from xrec.models import common
from xrec.train import checkpoint as ckpt
from xrec.train.hooks import l2sp
from xrec.train.loop import train_and_evaluate


@pytest.fixture(scope="module")
def pretrained(data_dir, tmp_path_factory):
  path = str(tmp_path_factory.mktemp("pre"))
  train_and_evaluate(tiny_config(data_dir), path)
  return path


def _finetune(data_dir, pretrained, strategy, **transfer):
  c = tiny_config(data_dir)
  c.train.init_from = pretrained
  c.transfer.strategy = strategy
  c.optim.update(dict(lr=1e-2, warmup_fraction=0.0, schedule="constant"))
  c.model.dropout = 0.0
  c.train.update(dict(num_steps=12, eval_every_steps=12, checkpoint_every_steps=4))
  c.transfer.l2sp.update(transfer)
  return c


def _distance(a, b) -> float:
  fa, fb = common.flatten(a), common.flatten(b)
  return float(np.sqrt(sum(np.sum((np.asarray(fa[p], np.float64) - np.asarray(fb[p], np.float64)) ** 2)
                           for p in fa)))


def _losses(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if r["split"] == "train"]


def test_penalty_is_alpha_half_squared_distance_plus_beta_half_fresh_norm():
  hook = l2sp.L2SP()
  hook.alpha, hook.beta, hook.loaded = 0.5, 0.25, frozenset({"a/w"})
  params = {"a": {"w": jnp.array([1.0, 2.0])}, "head": {"b": jnp.array([3.0])}}
  state = {"anchor": {"a": {"w": jnp.array([0.0, 4.0])}, "head": {"b": jnp.array([0.0])}}}
  loss, stats = hook.penalty(params, state)
  # alpha/2 * (1 + 4) + beta/2 * 9
  assert float(loss) == pytest.approx(0.25 * 5 + 0.125 * 9)
  assert float(stats["distance"]) == pytest.approx(np.sqrt(5.0))


def test_l2sp_keeps_the_weights_nearer_the_pretrained_ones_than_full_finetune(data_dir, pretrained, tmp_path):
  start, _ = ckpt.restore_best_params(pretrained)
  runs = {}
  for name, strategy, extra in (("ft", "full_finetune", {}), ("l2sp", "l2sp", {"alpha": 50.0, "beta": 0.0})):
    c = _finetune(data_dir, pretrained, strategy, **extra)
    c.train.eval_at_start = False
    c.train.early_stopping_patience = 0
    r = train_and_evaluate(c, str(tmp_path / name))
    assert r["transfer"]["strategy"] == strategy
    final, step = ckpt.restore_best_params(str(tmp_path / name))  # the only evaluation: the last step
    assert step == 12
    runs[name] = _distance(jax.device_get(final), start)
  rows = _losses(str(tmp_path / "l2sp"))
  assert all("loss/l2sp" in r and "l2sp/distance" in r for r in rows)
  assert not any("loss/l2sp" in r for r in _losses(str(tmp_path / "ft")))
  assert rows[0]["l2sp/distance"] < rows[-1]["l2sp/distance"]  # it moves, pulled back
  assert runs["l2sp"] < 0.5 * runs["ft"], runs


def test_a_resumed_l2sp_run_pulls_toward_the_pretrained_weights_not_where_it_resumed(data_dir, pretrained, tmp_path):
  whole = train_and_evaluate(_finetune(data_dir, pretrained, "l2sp", alpha=5.0), str(tmp_path / "whole"))
  c = _finetune(data_dir, pretrained, "l2sp", alpha=5.0)
  c.train.stop_after_steps = 9  # checkpoints at 4 and 8
  assert train_and_evaluate(c, str(tmp_path / "cut")) == {"stopped_at_step": 9}
  c.train.stop_after_steps = 0
  resumed = train_and_evaluate(c, str(tmp_path / "cut"))
  a, b = _losses(str(tmp_path / "whole")), _losses(str(tmp_path / "cut"))
  by_step = {r["step"]: r for r in b}
  for r in a:  # the same penalty at every step, the resumed steps included
    assert by_step[r["step"]]["loss/l2sp"] == pytest.approx(r["loss/l2sp"], rel=1e-4, abs=1e-6)
  assert resumed["test"]["ndcg@10"] == pytest.approx(whole["test"]["ndcg@10"], abs=1e-6)


def test_l2sp_without_a_pretrained_model_is_an_error(data_dir, tmp_path):
  c = tiny_config(data_dir)
  c.transfer.strategy = "l2sp"
  with pytest.raises(ValueError, match=r"transfer.strategy='l2sp' starts from a pretrained model"):
    train_and_evaluate(c, str(tmp_path / "w"))
  c.transfer.l2sp.update(dict(alpha=0.0, beta=0.0))
  with pytest.raises(ValueError, match=r"transfer.l2sp needs alpha >= 0 and beta >= 0, not both 0"):
    train_and_evaluate(c, str(tmp_path / "w2"))
