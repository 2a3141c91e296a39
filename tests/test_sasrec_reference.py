"""SASRec's reference-code block (model.sasrec.block="reference": queries normalised, keys and
values not, residuals on the normalised input, ReLU feed-forward) against a numpy version of that
code's formula, its last-position shortcut, and the item tables' init (model.item_init_std)."""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xrec import models
from xrec.defaults import base_config
from xrec.models.transformer import Block

INPUTS = jnp.array([[0, 0, 3, 5, 7, 9], [0, 0, 0, 0, 1, 2], [4, 8, 15, 16, 23, 30]], jnp.int32)


def _ln(x, p):
  mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _attention(q_in, kv_in, p, mask, heads):
  def proj(name, x):
    return np.einsum("ld,dhk->lhk", x, p[name]["kernel"]) + p[name]["bias"]
  q, k, v = proj("query", q_in), proj("key", kv_in), proj("value", kv_in)
  scores = np.einsum("qhk,shk->hqs", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(mask[None], scores, -np.inf)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  return np.einsum("hqs,shk->qhk", w, v).reshape(len(q_in), -1) @ p["out"]["kernel"].reshape(-1, q_in.shape[-1]) \
      + p["out"]["bias"]


def _block_params(block, x, mask, seed=0):
  params = block.init(jax.random.key(seed), x, mask, True)["params"]
  params = jax.tree.map(np.asarray, nn.meta.unbox(params))
  rng = np.random.default_rng(seed)  # non-zero biases and norms, so each one's place is checked
  return jax.tree.map(lambda v: (v + rng.normal(0, 0.1, v.shape)).astype(np.float32), params)


def test_the_reference_block_matches_the_reference_codes_formula():
  block = Block(num_heads=2, mlp_dim=6, dropout=0.0, block="reference")
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, 5, 4)).astype(np.float32)
  causal = np.tril(np.ones((5, 5), bool))
  mask = jnp.asarray(np.broadcast_to(causal, (2, 1, 5, 5)))
  params = _block_params(block, x, mask)
  got = np.asarray(block.apply({"params": params}, x, mask, True))
  for b in range(2):
    q = _ln(x[b], params["ln_attn"])
    h = q + _attention(q, x[b], params["attn"], causal, 2)  # residual on the normalised queries
    h = _ln(h, params["ln_mlp"])
    mlp = params["mlp"]
    want = h + np.maximum(h @ mlp["wi"]["kernel"] + mlp["wi"]["bias"], 0) @ mlp["wo"]["kernel"] + mlp["wo"]["bias"]
    np.testing.assert_allclose(got[b], want, rtol=2e-5, atol=2e-5)
  # the default pre-LN block on the same params computes something else
  pre_ln = np.asarray(Block(num_heads=2, mlp_dim=6, dropout=0.0).apply({"params": params}, x, mask, True))
  assert np.abs(pre_ln - got).max() > 1e-2
  # the last-position shortcut (evaluation) gives the last row of the full computation
  last = np.asarray(block.apply({"params": params}, x, mask, True, True))
  np.testing.assert_allclose(last[:, 0], got[:, -1], rtol=2e-5, atol=2e-5)


def _config(**model):
  c = base_config()
  c.model.update(dict(max_len=6, embed_dim=8, vocab_multiple=8, dropout=0.0))
  c.model.sasrec.update(dict(num_layers=2, num_heads=2, mlp_dim=16))
  for k, v in model.items():
    if k in ("block", "positions", "attention_dropout", "kernel_init_std"):
      c.model.sasrec[k] = v
    else:
      c.model[k] = v
  return c.model


def test_a_sasrec_with_the_reference_block_has_the_same_params_and_its_own_outputs():
  ref, pre = models.build(_config(block="reference"), 30), models.build(_config(), 30)
  params = jax.device_get(nn.unbox(ref.init(jax.random.key(0), INPUTS)["params"]))
  same = jax.tree.map(lambda a: a.shape, nn.unbox(pre.init(jax.random.key(0), INPUTS)["params"]))
  assert jax.tree.map(lambda a: a.shape, params) == same  # checkpoints and strategies apply to either
  hidden = ref.apply({"params": params}, INPUTS, method="encode")
  assert not np.allclose(hidden, pre.apply({"params": params}, INPUTS, method="encode"), atol=1e-3)
  np.testing.assert_allclose(ref.apply({"params": params}, INPUTS, method="last_states"), hidden[:, -1], atol=1e-5)
  changed = INPUTS.at[0, 5].set(11)  # still causal
  np.testing.assert_allclose(ref.apply({"params": params}, changed, method="encode")[0, :5], hidden[0, :5], atol=1e-6)


@pytest.mark.parametrize("field,bad,valid", [("block", "post_ln", "'pre_ln', 'reference'"),
                                             ("positions", "center", "'right', 'left'"),
                                             ("attention_dropout", "all", "'output', 'weights', 'both'")])
def test_a_bad_choice_names_the_valid_ones(field, bad, valid):
  with pytest.raises(ValueError, match=rf"model.sasrec.{field}='{bad}' is not valid; valid: \[{valid}\]"):
    models.build(_config(**{field: bad}), 30)
  from xrec.train import loop  # and the door refuses it before any data is read
  c = base_config()
  c.model.sasrec[field] = bad
  with pytest.raises(ValueError, match=rf"model.sasrec.{field}='{bad}' is not valid"):
    loop.validate(c)


def test_left_positions_count_from_the_windows_oldest_item():
  """model.sasrec.positions="left" (SASRec+'s layout): the oldest item of a window reads position
  row 0 and the newest row n - 1; the default puts the newest at max_len - 1. Checked against the
  default model with its position table shifted per sequence length, so each slot's row is known."""
  left, right = models.build(_config(positions="left"), 30), models.build(_config(), 30)
  params = jax.device_get(nn.unbox(right.init(jax.random.key(0), INPUTS)["params"]))
  assert jax.tree.map(np.shape, nn.unbox(left.init(jax.random.key(0), INPUTS)["params"])) == \
      jax.tree.map(np.shape, params)  # the same checkpoint fits either
  got = np.asarray(left.apply({"params": params}, INPUTS, method="encode"))
  table = params["pos_embed"]["embedding"]
  for b, row in enumerate(np.asarray(INPUTS)):
    n = int((row > 0).sum())
    shifted = jax.tree.map(lambda v: v, params)
    shifted["pos_embed"]["embedding"] = np.concatenate([table[n:], table[:n]])  # slot max_len - n + i reads row i
    want = np.asarray(right.apply({"params": shifted}, INPUTS[b:b + 1], method="encode"))[0]
    np.testing.assert_allclose(got[b, 6 - n:], want[6 - n:], rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, right.apply({"params": params}, INPUTS, method="encode"), atol=1e-3)
  # a blank inside the window (a masked item) keeps its slot: the newest item of [_, _, 3, 5, 0, 9]
  # reads row 3, as in [_, _, 3, 5, 7, 9]
  blank = INPUTS.at[0, 4].set(0)
  shifted = jax.tree.map(lambda v: v, params)
  shifted["pos_embed"]["embedding"] = np.concatenate([table[4:], table[:4]])
  np.testing.assert_allclose(left.apply({"params": params}, blank[:1], method="encode")[0, 2:],
                             right.apply({"params": shifted}, blank[:1], method="encode")[0, 2:], rtol=1e-5, atol=1e-5)
  # less left padding (the evaluation's length buckets) changes nothing, and last_states agrees
  trimmed = np.asarray(left.apply({"params": params}, INPUTS[1:2, 2:], method="encode"))
  np.testing.assert_allclose(trimmed[0, -2:], got[1, -2:], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(left.apply({"params": params}, INPUTS, method="last_states"), got[:, -1], atol=1e-5)


@pytest.mark.parametrize("field,value", [("sasrec.positions", "left"), ("sasrec.attention_dropout", "weights"),
                                         ("sasrec.kernel_init_std", 0.02), ("output_bias", False)])
def test_the_reference_fields_at_their_defaults_leave_a_stages_hash_as_before(field, value):
  """Stages computed before these fields existed (the committed reproduction rows) keep their hashes."""
  from xrec.train import experiment
  c = base_config()
  before = experiment.stage_hash(c)
  *parents, leaf = field.split(".")
  node = c.model
  for name in parents:
    node = node[name]
  default = node[leaf]
  node[leaf] = value
  assert experiment.stage_hash(c) != before
  node[leaf] = default
  del node[leaf]
  assert experiment.stage_hash(c) == before


def _attention_params(heads=2, embed=4, seed=0):
  from xrec.models.transformer import Attention
  x = np.random.default_rng(seed).normal(size=(2, 5, embed)).astype(np.float32)
  mask = jnp.asarray(np.broadcast_to(np.tril(np.ones((5, 5), bool)), (2, 1, 5, 5)))
  params = jax.device_get(nn.unbox(Attention(heads).init(jax.random.key(seed), x, mask)["params"]))
  return x, mask, params


def test_attention_dropout_on_the_weights_drops_weights_and_only_in_training():
  """attention_dropout="weights" (the reference code's MultiheadAttention): in training the dropout
  acts on the softmax weights [batch, heads, query, key], and the output is what the dropped
  weights give (checked in numpy on the weights the dropout returned); in evaluation it is the
  plain attention."""
  from xrec.models.transformer import Attention
  x, mask, params = _attention_params()
  plain = np.asarray(Attention(2).apply({"params": params}, x, mask))
  dropped = Attention(2, dropout=0.5)
  np.testing.assert_allclose(dropped.apply({"params": params}, x, mask), plain, rtol=1e-6, atol=1e-6)
  seen = []

  def record(next_fun, args, kwargs, context):
    y = next_fun(*args, **kwargs)
    if isinstance(context.module, nn.Dropout):
      seen.append((np.asarray(args[0]), np.asarray(y)))
    return y
  with nn.intercept_methods(record):
    got = np.asarray(dropped.apply({"params": params}, x, mask, deterministic=False,
                                   rngs={"dropout": jax.random.key(3)}))
  assert len(seen) == 1
  weights_in, weights_out = seen[0]
  p = jax.tree.map(np.asarray, params)
  q, k, v = (np.einsum("bld,dhk->blhk", x, p[n]["kernel"]) + p[n]["bias"] for n in ("query", "key", "value"))
  scores = np.where(np.asarray(mask), np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(2.0), -np.inf)
  w = np.exp(scores - scores.max(-1, keepdims=True))
  w /= w.sum(-1, keepdims=True)
  np.testing.assert_allclose(weights_in, w, rtol=1e-5, atol=1e-6)  # what is dropped: the weights
  kept = weights_out != 0
  assert 0 < kept[w > 0].mean() < 1
  np.testing.assert_allclose(weights_out[kept], 2 * w[kept], rtol=1e-5)  # rescaled by 1 / (1 - 0.5)
  want = np.einsum("bhqk,bkhd->bqhd", weights_out, v)
  want = np.einsum("bqhd,hde->bqe", want, p["out"]["kernel"]) + p["out"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert not np.allclose(got, plain, atol=1e-3)


@pytest.mark.parametrize("mode,order", [("output", ["block", "mlp", "block"]),
                                        ("weights", ["weights", "mlp", "block"]),
                                        ("both", ["weights", "block", "mlp", "block"])])
def test_attention_dropout_places_each_blocks_dropouts(mode, order):
  """Per block, in call order: the dropouts on the attention weights ([batch, heads, query, key],
  inside attn), on a sublayer's output before its residual sum (the block's own), and inside the
  feed-forward. "output" drops the attention output and not its weights, "weights" the weights and
  not the output, "both" both; evaluation is the same function for all three."""
  model = models.build(_config(dropout=0.3, attention_dropout=mode), 30)
  params = jax.device_get(nn.unbox(model.init(jax.random.key(0), INPUTS)["params"]))
  seen = {}

  def record(next_fun, args, kwargs, context):
    if isinstance(context.module, nn.Dropout) and context.module.scope.path[0].startswith("block_"):
      path = context.module.scope.path
      kind = "weights" if path[1] == "attn" else "mlp" if path[1] == "mlp" else "block"
      assert args[0].ndim == (4 if kind == "weights" else 3)
      seen.setdefault(path[0], []).append(kind)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(record):
    model.apply({"params": params}, INPUTS, deterministic=False, method="encode", rngs={"dropout": jax.random.key(5)})
  assert seen == {"block_0": order, "block_1": order}
  default = models.build(_config(dropout=0.3), 30)
  np.testing.assert_allclose(model.apply({"params": params}, INPUTS, method="encode"),
                             default.apply({"params": params}, INPUTS, method="encode"), rtol=1e-6, atol=1e-6)


def test_kernel_init_std_sets_the_reference_kernels():
  """kernel_init_std=0.02 starts the feed-forward and attention-output kernels at N(0, 0.02^2) and
  keeps query / key / value at Xavier uniform; a negative std is refused by the door and the model."""
  wide = _config(embed_dim=64, kernel_init_std=0.02)
  wide.sasrec.update(dict(mlp_dim=64, num_heads=1))
  init = nn.unbox(models.build(wide, 30).init(jax.random.key(0), INPUTS)["params"])
  block = jax.tree.map(lambda a: float(np.std(np.asarray(a))), init["block_0"])
  for kernel in (block["mlp"]["wi"]["kernel"], block["mlp"]["wo"]["kernel"], block["attn"]["out"]["kernel"]):
    assert kernel == pytest.approx(0.02, rel=0.1)
  assert block["attn"]["query"]["kernel"] == pytest.approx((2 / (64 + 64)) ** 0.5, rel=0.1)  # Xavier uniform
  from xrec.train import loop
  c = base_config()
  c.model.sasrec.kernel_init_std = -0.1
  with pytest.raises(ValueError, match=r"model.sasrec.kernel_init_std=-0.1"):
    loop.validate(c)
  with pytest.raises(ValueError, match=r"model.sasrec.kernel_init_std=-0.1 is not valid; valid: a number >= 0"):
    models.build(_config(kernel_init_std=-0.1), 30)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "hstu"])
def test_item_init_std_sets_the_item_tables_scale(name):
  def table_std(**fields):
    module = models.build(_config(name=name, embed_dim=64, **fields), 2000)
    params = nn.unbox(module.init(jax.random.key(0), INPUTS)["params"])
    return float(np.std(np.asarray(params["item_embed"]["embedding"])))
  assert table_std() == pytest.approx(64 ** -0.5, rel=0.03)  # the default: 1/sqrt(embed)
  assert table_std(item_init_std=0.02) == pytest.approx(0.02, rel=0.03)


def test_the_benchmarks_plain_reference_block_is_the_same_function():
  """experiments/bench's plain Flax loop writes the reference block with flax's own layers (its
  time-to-quality baseline for a row with block=reference): the same output as xrec's on the same
  weights, so the two loops train one model."""
  import sys
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "bench"))
  import bench
  rng = np.random.default_rng(3)
  x = rng.normal(size=(2, 5, 4)).astype(np.float32)
  causal = jnp.asarray(np.broadcast_to(np.tril(np.ones((5, 5), bool)), (2, 1, 5, 5)))
  plain = bench.NaiveBlock(4, 2, 6, jnp.float32, 0.0, "reference")
  pp = jax.tree.map(lambda v: np.asarray(v) + rng.normal(0, 0.1, v.shape).astype(np.float32),
                    plain.init(jax.random.key(0), x, causal)["params"])
  mine = {"ln_attn": pp["LayerNorm_0"], "ln_mlp": pp["LayerNorm_1"], "attn": pp["MultiHeadDotProductAttention_0"],
          "mlp": {"wi": pp["Dense_1"], "wo": pp["Dense_0"]}}
  ours = Block(num_heads=2, mlp_dim=6, dropout=0.0, block="reference").apply({"params": mine}, x, causal, True)
  np.testing.assert_allclose(np.asarray(ours), np.asarray(plain.apply({"params": pp}, x, causal)), rtol=2e-5, atol=2e-5)
  pre_ln = bench.NaiveBlock(4, 2, 6, jnp.float32, 0.0).apply({"params": pp}, x, causal)
  assert np.abs(np.asarray(pre_ln) - np.asarray(ours)).max() > 1e-2


def _reference_strategies():
  import test_encoders as T
  from xrec.transfer import strategies
  mc = T.model_config("sasrec")
  mc.model.sasrec.block = "reference"
  encoder = models.build(mc.model, T.NUM_ITEMS)
  return sorted(s for s in strategies.applicable(encoder.roles(), encoder.causal) if s in strategies.INSERTING)


@pytest.mark.parametrize("strategy", _reference_strategies())
def test_every_inserting_preset_starts_as_the_pretrained_reference_block_model(strategy):
  """adapters, LoRA, prompts and patches sit in the reference block as in the pre-LN one: at step 0
  the transferred model scores exactly as the pretrained one, and what they add is live."""
  import test_encoders as T
  from xrec.config import model_config as with_model_fields
  from xrec.models import common
  from xrec.transfer import apply as transfer_apply
  from xrec.transfer import schedule as schedules
  plan = transfer_apply.prepare(T.transfer_config(strategy).transfer)
  mc = T.model_config("sasrec")
  mc.model.sasrec.block = "reference"
  encoder = models.build(with_model_fields(mc.model, plan.model_fields), T.NUM_ITEMS)
  module, plan = plan.bind(encoder)
  assert encoder.block == "reference"
  pretrained = T.perturbed(T.init(encoder, seed=1))
  params, _ = plan.init_params(T.init(module, seed=2), pretrained, T.KEYS, T.KEYS)
  items = slice(1, T.NUM_ITEMS + 1)
  want = encoder.apply({"params": pretrained}, T.INPUTS, method="score_last")[:, items]
  np.testing.assert_array_equal(np.asarray(module.apply({"params": params}, T.INPUTS, method="score_last")[:, items]),
                                np.asarray(want))
  mults = schedules.resolve(params, plan.schedule)
  nudged = common.unflatten({p: v + 0.5 if mults[p] is not None and p.startswith("inserted/") else v
                             for p, v in common.flatten(params).items()})
  assert not np.allclose(module.apply({"params": nudged}, T.INPUTS, method="score_last")[:, items], want)


def test_pretrain_then_transfer_without_an_output_bias(data_dir, tmp_path):
  """model.output_bias=False through the whole loop: pretraining, a checkpoint with no bias, a
  transfer that loads it (frozen encoder: only the item table trains) and evaluation."""
  from conftest import tiny_config
  from xrec.models import common
  from xrec.train import checkpoint as ckpt
  from xrec.train.loop import train_and_evaluate
  pre = tiny_config(data_dir)
  pre.model.output_bias = False
  train_and_evaluate(pre, str(tmp_path / "pre"))
  source, _ = ckpt.restore_best_params(str(tmp_path / "pre"))
  assert "output_bias" not in source
  c = tiny_config(data_dir)
  c.model.output_bias = False
  c.data.domain = "target"
  c.transfer.strategy = "frozen_encoder"
  c.train.init_from = str(tmp_path / "pre")
  r = train_and_evaluate(c, str(tmp_path / "ft"))
  assert np.isfinite(r["test"]["ndcg@10"])
  tuned, _ = ckpt.restore_best_params(str(tmp_path / "ft"))
  flat_src, flat = common.flatten(source), common.flatten(tuned)
  assert sorted(flat) == sorted(flat_src)
  frozen = [p for p in flat if p != "item_embed/embedding"]
  assert all(np.array_equal(flat[p], flat_src[p]) for p in frozen)
  assert not np.array_equal(flat["item_embed/embedding"], flat_src["item_embed/embedding"])
