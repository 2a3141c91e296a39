"""Pruning: masks, the schedule, pruned entries stay zero through fine-tuning, and a structurally
pruned Transformer shrinks into a smaller dense model with the same scores."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from test_encoders import INPUTS, NUM_ITEMS, build, init, perturbed
from test_encoders import model_config as model_config_of
from xrec import models
from xrec.models import common
from xrec.train import checkpoint as ckpt
from xrec.config import model_config
from xrec.train.loop import train_and_evaluate
from xrec.transfer import prune as pruning


def test_schedule_ramps_cubically_to_the_ratio():
  events = pruning.schedule(0.8, 4, 100, 0.0, 0.5)
  assert [s for s, _ in events] == [12, 25, 38, 50]
  ratios = [r for _, r in events]
  assert ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.8)
  assert ratios[0] == pytest.approx(0.8 * (1 - 0.75 ** 3))
  with pytest.raises(ValueError, match=r"transfer.prune.ratio=1.0 must be in \[0, 1\)"):
    pruning.schedule(1.0, 3, 100, 0.0, 0.5)
  with pytest.raises(ValueError, match=r"transfer.prune.ratio=-0.1 must be in \[0, 1\)"):
    pruning.schedule(-0.1, 3, 100, 0.0, 0.5)


def test_global_magnitude_masks_the_smallest_block_weights():
  module = build("sasrec")
  params = perturbed(init(module))
  pruner = pruning.Pruner("magnitude", module.roles())
  masks = pruner.masks(params, 0.3)
  flat, flat_m = common.flatten(params), common.flatten(masks)
  paths = pruner.prunable(flat)
  assert paths and all(p.startswith("block_") and p.endswith("kernel") for p in paths)
  assert pruning.sparsity(params, masks, paths) == pytest.approx(0.3, abs=0.01)
  kept = np.concatenate([np.abs(flat[p])[flat_m[p] > 0] for p in paths])
  gone = np.concatenate([np.abs(flat[p])[flat_m[p] == 0] for p in paths])
  assert gone.max() <= kept.min()  # global: every pruned weight is smaller than every kept one
  assert all((flat_m[p] == 1).all() for p in flat if p not in paths)  # tables, norms, biases untouched


def test_a_ratio_that_removes_nothing_is_refused_before_training():
  """Half of one head is no head: the run would fine-tune the unpruned model under a pruning label."""
  def build_heads(heads):
    cfg = model_config_of("sasrec")
    cfg.model.sasrec.num_heads = heads
    return models.build(cfg.model, NUM_ITEMS)
  one_head = build_heads(1)
  params = perturbed(init(one_head))
  with pytest.raises(ValueError, match=r"transfer.prune.kind='heads' at transfer.prune.ratio=0.5 removes nothing "
                                       r"from this model \(the ratio rounds down to none of its attention heads per block"):
    pruning.Pruner("heads", one_head.roles()).check_removes_something(params, 0.5)
  two_heads = build_heads(2)
  pruning.Pruner("heads", two_heads.roles()).check_removes_something(perturbed(init(two_heads)), 0.5)  # one goes
  pruning.Pruner("mlp", one_head.roles()).check_removes_something(params, 0.5)
  from xrec.defaults import base_config  # from the config alone, before any work (launch.py's checks)
  from xrec.train import loop
  c = base_config()
  c.transfer.strategy, c.transfer.prune.kind, c.transfer.prune.ratio = "prune", "heads", 0.5
  c.model.sasrec.num_heads = 1
  with pytest.raises(ValueError, match=r"transfer.prune.kind='heads' at transfer.prune.ratio=0.5 removes nothing "
                                       r"from model.sasrec \(1 attention heads per block"):
    loop.validate(c)
  c.model.sasrec.num_heads = 2
  loop.validate(c)


@pytest.mark.parametrize("kind,field", [("heads", "num_heads"), ("mlp", "mlp_dim")])
def test_structured_pruning_shrinks_to_a_dense_model_with_the_same_scores(kind, field):
  cfg = model_config(_config().model, {})
  module = models.build(cfg, NUM_ITEMS)
  params = perturbed(init(module))
  pruner = pruning.Pruner(kind, module.roles())
  masks = pruner.masks(params, 0.5)
  masked = jax.tree.map(lambda p, m: p * m, params, masks)
  small_params, fields = pruning.shrink(masked, masks, kind, module.roles())
  with cfg.unlocked():
    cfg.sasrec.update(fields)
    cfg.sasrec.head_dim = cfg.embed_dim // 2
  small = models.build(cfg, NUM_ITEMS)
  assert fields[field] == (1 if kind == "heads" else 8)
  assert common.param_count(small_params) < common.param_count(params)
  np.testing.assert_allclose(small.apply({"params": small_params}, INPUTS, method="score_last"),
                             module.apply({"params": masked}, INPUTS, method="score_last"), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"prune.kind='heads' needs a Transformer encoder.*\['magnitude'\]"):
    pruning.Pruner("heads", build("gru4rec").roles())


def _config():
  return _encoder_config("sasrec")


def _pruned_run(data_dir, tmp_path, kind: str) -> dict:
  """A tiny pretraining, then its fine-tuning on the target pruned to 50% (`kind`) in 2 events."""
  pre = tiny_config(data_dir)
  train_and_evaluate(pre, str(tmp_path / "pre"))
  c = tiny_config(data_dir)
  c.data.domain = "target"
  c.transfer.strategy = "prune"
  c.transfer.prune.update(dict(kind=kind, ratio=0.5, events=2, start=0.0, end=0.5))
  c.train.init_from = str(tmp_path / "pre")
  return train_and_evaluate(c, str(tmp_path / kind))


def _served_params(results: dict) -> int:
  """Params of the served model that experiments/distill_prune/speed.py rebuilds from a run's results."""
  import importlib.util
  import jax
  import ml_collections
  from xrec.data import pipeline
  spec = importlib.util.spec_from_file_location("distill_prune_speed", os.path.join(
      os.path.dirname(__file__), "..", "experiments", "distill_prune", "speed.py"))
  speed = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(speed)
  domain = pipeline.load_domain(ml_collections.ConfigDict(results["config"]).data)
  config, module, _, _ = speed.served(results, domain)
  shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)},
                                              jnp.ones((1, config.model.max_len), jnp.int32))["params"])
  return common.param_count(nn.unbox(shapes))


@pytest.mark.parametrize("kind", ["magnitude", "heads"])
def test_pruned_entries_stay_zero_through_fine_tuning(data_dir, tmp_path, kind):
  r = _pruned_run(data_dir, tmp_path, kind)
  report = r["pruning"]
  best, best_step = ckpt.restore_best_params(str(tmp_path / kind))
  assert best_step >= 6  # candidates only after the last pruning step (step 6 of 12)
  flat = common.flatten(best)
  if kind == "magnitude":
    assert report["sparsity_of_blocks"] == pytest.approx(0.5, abs=0.01)
    zeros = sum(int((np.asarray(v) == 0).sum()) for p, v in flat.items() if p.startswith("block_") and p.endswith("kernel"))
    assert zeros >= 0.5 * sum(np.size(v) for p, v in flat.items() if p.startswith("block_") and p.endswith("kernel"))
  else:
    for block in ("block_0", "block_1"):  # 2 heads -> 1 left, exactly zero after fine-tuning
      out = np.asarray(flat[f"{block}/attn/out/kernel"])
      assert sorted(np.abs(out).reshape(2, -1).max(1) > 0) == [False, True]
    dense = report["dense"]
    assert dense["model_fields"] == {"num_heads": 1} and dense["params"] < report["params"]
    assert _served_params(r) == dense["params"]
    assert dense["test"]["ndcg@10"] == pytest.approx(r["test"]["ndcg@10"], abs=1e-6)
  assert report["nonzero_params"] < report["params"]


@pytest.mark.parametrize("name,fields", [("sasrec", {}), ("gru4rec", {}), ("sasrec", {"output_bias": False})])
def test_cold_item_rows_pruned_and_shrunk_to_the_kept_items(name, fields):
  module = build(name, **fields)
  params = perturbed(init(module))
  counts = np.arange(NUM_ITEMS + 1) % 7  # item i has i mod 7 interactions (id 0 is padding)
  pruner = pruning.Pruner("items", module.roles(), counts)
  masks = pruner.masks(params, 0.4)
  served = pruning.served_items(masks, module.roles())
  dead = np.flatnonzero(~served[1:NUM_ITEMS + 1]) + 1
  assert len(dead) == int(0.4 * NUM_ITEMS)
  assert counts[dead].max() <= counts[np.flatnonzero(served[1:NUM_ITEMS + 1]) + 1].min()  # the coldest go
  masked = jax.tree.map(lambda p, m: p * m, params, masks)
  flat = common.flatten(masked)
  for path in module.roles().item_rows:
    assert (np.asarray(flat[path])[dead] == 0).all(), path
  # the dense model over the kept items: same scores for the kept items, the pruned ones read as its zero row
  kept = NUM_ITEMS - len(dead)
  small = models.build(model_config(_encoder_config(name, **fields).model, {}), kept + 1)
  shapes = {p: tuple(v.shape) for p, v in common.flatten(init(small)).items()}
  small_params, id_map = pruning.shrink_items(masked, masks, module.roles(), shapes, NUM_ITEMS)
  assert common.param_count(small_params) < common.param_count(params)
  x = jnp.asarray(np.where(INPUTS > 0, np.asarray(id_map)[np.asarray(INPUTS)], 0), jnp.int32)
  big = np.asarray(module.apply({"params": masked}, INPUTS, method="score_last"))
  dense = np.asarray(small.apply({"params": small_params}, x, method="score_last"))
  kept_ids = np.flatnonzero(served[1:NUM_ITEMS + 1]) + 1
  np.testing.assert_allclose(dense[:, 1:kept + 1], big[:, kept_ids], rtol=1e-5, atol=1e-5)
  # evaluation ranks only the served items: a pruned target is a miss
  from xrec.evaluate import metrics
  scores = jnp.asarray(big)
  ranks = metrics.target_rank(scores, jnp.asarray([dead[0]] * 3), NUM_ITEMS, candidates=jnp.asarray(served))
  assert (np.asarray(ranks) == module.vocab_size).all()  # a miss even at K >= the served items


def _encoder_config(name, **fields):
  from test_encoders import model_config as encoder_config
  return encoder_config(name, **fields)


@pytest.mark.parametrize("kind", ["items", "dims"])
def test_item_table_pruning_run_reports_the_dense_model(data_dir, tmp_path, kind):
  r = _pruned_run(data_dir, tmp_path, kind)
  report = r["pruning"]
  dense = report["dense"]
  if kind == "items":
    assert report["items_served"] == 100  # of the 200 target items
    assert dense["model_fields"] == {"num_items": 100}
  else:
    assert report["items_served"] == 200 and dense["model_fields"] == {"item_columns": 8}  # of 16 dims
  assert dense["params"] < report["params"]
  assert _served_params(r) == dense["params"]  # the speed benchmark serves the same model
  assert dense["test"]["ndcg@10"] == pytest.approx(r["test"]["ndcg@10"], abs=1e-6)
  assert dense["eval_users_per_second"] > 0


@pytest.mark.parametrize("name,untied", [("sasrec", False), ("gru4rec", True), ("nextitnet", False)])
def test_embedding_dims_pruned_to_narrower_item_tables_with_the_same_scores(name, untied):
  full = _encoder_config(name)
  full.model.tie_embeddings = not untied
  module = models.build(model_config(full.model, {}), NUM_ITEMS)
  params = perturbed(init(module))
  pruner = pruning.Pruner("dims", module.roles())
  masks = pruner.masks(params, 0.5)
  kept = pruning.kept_dims(masks, module.roles())
  assert len(kept) == 4  # of 8 dims
  masked = jax.tree.map(lambda p, m: p * m, params, masks)
  small_params, fields = pruning.shrink_dims(masked, masks, module.roles())
  small = models.build(model_config(full.model, fields), NUM_ITEMS)
  assert small.apply({"params": small_params}, INPUTS, method="score_last").shape == (3, module.vocab_size)
  assert common.flatten(small_params)["item_embed/embedding"].shape == (module.vocab_size, 4)
  np.testing.assert_allclose(small.apply({"params": small_params}, INPUTS, method="score_last"),
                             module.apply({"params": masked}, INPUTS, method="score_last"), rtol=1e-5, atol=1e-5)
  hidden, table, _ = small.apply({"params": small_params}, INPUTS)
  assert hidden.shape[-1] == table.shape[-1] == 4  # training terms see the narrowed scoring space
  with pytest.raises(ValueError, match=r"model.item_columns=\(3, 1\) must be increasing dims in \[0, 8\)"):
    models.build(model_config(full.model, {"item_columns": (3, 1)}), NUM_ITEMS)
