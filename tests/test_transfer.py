"""Transfer strategies by param-tree surgery (xrec/transfer) on a tiny SASRec.

Tiny model: 50 items (vocab 56 rows = 51 rounded up to 8), max_len 8, embed 16,
2 blocks, 2 heads, mlp 32 -> 5,560 params. The exact trainable counts below are
quoted in docs/transfer.md.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from xrec.defaults import base_config
from xrec.models import common
from xrec.models.sasrec import SASRec
from xrec.train import optimizer
from xrec.transfer import apply as transfer_apply
from xrec.transfer import schedule as schedules
from xrec.transfer import strategies

NUM_ITEMS, VOCAB, MAX_LEN = 50, 56, 8
KEYS = [f"item{i:03d}" for i in range(NUM_ITEMS)]
TOTAL = 5560
INPUTS = jnp.array([[0, 0, 0, 3, 5, 7, 9, 11], [0, 0, 0, 0, 0, 0, 1, 2], [4, 8, 15, 16, 23, 42, 50, 1]],
                   jnp.int32)


def tiny_model(**fields):
  return SASRec(vocab_size=fields.pop("vocab_size", VOCAB), max_len=fields.pop("max_len", MAX_LEN),
                num_items=NUM_ITEMS, embed_dim=16, num_layers=fields.pop("num_layers", 2), num_heads=2,
                mlp_dim=32, dropout=0.1, **fields)


def init(module, seed=0):
  x = jnp.ones((1, module.max_len), jnp.int32)
  # eager, not jitted: op-by-op compiles are shared by all the model variants of these tests
  return jax.device_get(nn.unbox(module.init({"params": jax.random.key(seed)}, x)["params"]))


def apply(module, params, method="__call__"):
  """Hidden states [batch, len, embed] (method='__call__') or scores [batch, vocab] of INPUTS."""
  out = module.apply({"params": params}, INPUTS, method=method)
  return np.asarray(out[0] if method == "__call__" else out)


def tiny_config(strategy, options=None):
  """options: dotted config.transfer fields, e.g. {"adapter.kind": "parallel", "lr_mult": 0.5}."""
  from xrec.config import with_overrides
  c = base_config()
  c.model.update(dict(max_len=MAX_LEN, embed_dim=16))
  c.model.sasrec.update(dict(num_layers=2, num_heads=2, mlp_dim=32))
  c.transfer.strategy = strategy
  c.transfer.adapter.dim, c.transfer.lora.rank, c.transfer.prompt.num_prompts = 4, 2, 3
  c.transfer.patch.dim, c.transfer.shared_layers.bottom_blocks = 4, 1
  return with_overrides(c, {f"transfer.{k}": v for k, v in (options or {}).items()})


@pytest.fixture(scope="module")
def pretrained():
  """'Pretrained' params: a seed-1 init with non-zero biases/norms so loading is visible."""
  params = common.flatten(init(tiny_model(), seed=1))
  rng = np.random.default_rng(0)
  return common.unflatten({p: v + rng.normal(0, 0.1, v.shape).astype(v.dtype) for p, v in params.items()})


def bound(strategy, options=None, **model_fields):
  """(module, plan) of a preset on the tiny SASRec."""
  if strategy == "cross_user":  # set by the trainer from the data: the source model's vocab (the same 56 here)
    options = {"cross_user.rows": VOCAB, "cross_user.source_dim": 16, **(options or {})}
  plan = transfer_apply.prepare(tiny_config(strategy, options).transfer)
  return plan.bind(tiny_model(**model_fields).clone(**plan.model_fields))


def transfer(strategy, pretrained, source_keys=KEYS, target_keys=KEYS, vocab=VOCAB, options=None):
  module, plan = bound(strategy, options, vocab_size=vocab)
  params, report = plan.init_params(init(module, seed=2), pretrained, source_keys, target_keys)
  return plan, module, params, report


# --- SASRec with defaults is exactly the model it was -----------------------------------------

# paths, shapes and sum(|param|) of the seed-0 init and the first scores, recorded with SASRec as
# it was before the optional transfer modules were added (commit 0c6c48a, same settings)
DEFAULT_TREE = {
    "block_0/attn/key/bias": ((2, 8), 0.0), "block_0/attn/key/kernel": ((16, 2, 8), 55.92548299534246),
    "block_0/attn/out/bias": ((16,), 0.0), "block_0/attn/out/kernel": ((2, 8, 16), 55.79028679593466),
    "block_0/attn/query/bias": ((2, 8), 0.0), "block_0/attn/query/kernel": ((16, 2, 8), 56.03522432106547),
    "block_0/attn/value/bias": ((2, 8), 0.0), "block_0/attn/value/kernel": ((16, 2, 8), 57.41465603893448),
    "block_0/ln_attn/bias": ((16,), 0.0), "block_0/ln_attn/scale": ((16,), 16.0),
    "block_0/ln_mlp/bias": ((16,), 0.0), "block_0/ln_mlp/scale": ((16,), 16.0),
    "block_0/mlp/wi/bias": ((32,), 0.0), "block_0/mlp/wi/kernel": ((16, 32), 92.27606225969066),
    "block_0/mlp/wo/bias": ((16,), 0.0), "block_0/mlp/wo/kernel": ((32, 16), 91.9584199382225),
    "block_1/attn/key/bias": ((2, 8), 0.0), "block_1/attn/key/kernel": ((16, 2, 8), 58.35995646746596),
    "block_1/attn/out/bias": ((16,), 0.0), "block_1/attn/out/kernel": ((2, 8, 16), 55.99717928317841),
    "block_1/attn/query/bias": ((2, 8), 0.0), "block_1/attn/query/kernel": ((16, 2, 8), 57.28380099008791),
    "block_1/attn/value/bias": ((2, 8), 0.0), "block_1/attn/value/kernel": ((16, 2, 8), 55.5463661395479),
    "block_1/ln_attn/bias": ((16,), 0.0), "block_1/ln_attn/scale": ((16,), 16.0),
    "block_1/ln_mlp/bias": ((16,), 0.0), "block_1/ln_mlp/scale": ((16,), 16.0),
    "block_1/mlp/wi/bias": ((32,), 0.0), "block_1/mlp/wi/kernel": ((16, 32), 89.97915680130245),
    "block_1/mlp/wo/bias": ((16,), 0.0), "block_1/mlp/wo/kernel": ((32, 16), 93.95562425395474),
    "final_ln/bias": ((16,), 0.0), "final_ln/scale": ((16,), 16.0),
    "item_embed/embedding": ((56, 16), 175.62273576254665), "output_bias": ((56,), 0.0),
    "pos_embed/embedding": ((8, 16), 1.9961974527977873),
}
DEFAULT_SCORES = [[-0.8397353887557983, 0.25545328855514526, -0.20984357595443726, -0.7775533199310303,
                   0.5281271934509277, -0.23879346251487732],
                  [1.9093165397644043, 0.5478349328041077, 2.9615139961242676, 0.7512639760971069,
                   0.9257329702377319, 1.1087346076965332]]


def test_default_sasrec_tree_and_outputs_unchanged():
  module = SASRec(vocab_size=VOCAB, max_len=8, num_items=NUM_ITEMS, embed_dim=16, num_layers=2,
                  num_heads=2, mlp_dim=32, dropout=0.1)
  x = jnp.array([[0, 0, 0, 3, 5, 7, 9, 11], [0, 0, 0, 0, 0, 0, 1, 2]], jnp.int32)
  params = nn.unbox(module.init({"params": jax.random.key(0), "dropout": jax.random.key(1)}, x)["params"])
  flat = common.flatten(params)
  assert sorted(flat) == sorted(DEFAULT_TREE)
  for path, (shape, abs_sum) in DEFAULT_TREE.items():
    assert flat[path].shape == shape, path
    np.testing.assert_allclose(np.abs(np.asarray(flat[path], np.float64)).sum(), abs_sum, rtol=1e-6,
                               err_msg=path)
  scores = module.apply({"params": params}, x, method="score_last")
  np.testing.assert_allclose(np.asarray(scores)[:, :6], DEFAULT_SCORES, rtol=1e-5, atol=1e-6)


# --- zero-initialised inserted modules: the transferred model is the pretrained function -----

@pytest.mark.parametrize("strategy,options", [
    ("adapter", {}), ("adapter", {"adapter.kind": "parallel"}),
    ("lora", {}), ("lora", {"lora.targets": ("query", "key", "value", "out", "wi", "wo")}),
    ("prompt", {}), ("patch", {}), ("linear_probe", {}),
])
def test_zero_init_identity_at_step_0(pretrained, strategy, options):
  plan, module, params, _ = transfer(strategy, pretrained, options=options)
  assert set(common.flatten(params)) > set(common.flatten(pretrained)), "modules were inserted"
  base = tiny_model()
  np.testing.assert_array_equal(apply(module, params), apply(base, pretrained))
  # scores of every real item (sharding-padding rows beyond NUM_ITEMS keep their init, never scored)
  items = slice(1, NUM_ITEMS + 1)
  want_scores = apply(base, pretrained, "score_last")[:, items]
  np.testing.assert_array_equal(apply(module, params, "score_last")[:, items], want_scores)
  # and the modules are live: a non-zero nudge of the trainable params changes the function
  mults = schedules.resolve(params, plan.schedule)
  nudged = common.unflatten({p: v + 0.5 if mults[p] is not None and p != "output_bias" else v
                             for p, v in common.flatten(params).items()})
  assert not np.allclose(apply(module, nudged, "score_last")[:, items], want_scores)


@pytest.mark.parametrize("strategy,options", [
    ("full_finetune", {}), ("adapter", {}), ("adapter", {"adapter.kind": "parallel"}),
    ("lora", {"lora.targets": ("query", "key", "value", "out", "wi", "wo")}), ("prompt", {}), ("patch", {}),
    ("dann", {}),
])
def test_score_last_computes_only_the_last_position_and_scores_the_same(pretrained, strategy, options):
  """score_last's last block computes only the last position (TransformerEncoder.last_states):
  with every inserted module live (nudged away from zero), its scores equal scoring the last of
  the states the full forward pass computes."""
  plan, module, params, _ = transfer(strategy, pretrained, options=options)
  nudged = common.unflatten({p: v + 0.3 * np.sign(v + 0.01) for p, v in common.flatten(params).items()})
  hidden, table, bias = module.apply({"params": nudged}, INPUTS)
  want = np.asarray(common.score_items(hidden[:, -1], table, bias))
  got = apply(module, nudged, "score_last")
  np.testing.assert_allclose(got[:, 1:NUM_ITEMS + 1], want[:, 1:NUM_ITEMS + 1], rtol=1e-5, atol=1e-5)
  # evaluation length buckets: without 3 slots of left padding, the wrapped model scores the same
  assert module.trims_left_padding
  padded = INPUTS[:2]  # 3 and 6 leading padding slots
  trimmed = module.apply({"params": nudged}, padded[:, 3:], method="score_last")
  np.testing.assert_allclose(np.asarray(trimmed)[:, 1:NUM_ITEMS + 1], got[:2, 1:NUM_ITEMS + 1], rtol=1e-5, atol=1e-5)


# --- exact trainable counts per preset --------------------------------------------------------

# per block: 2 LayerNorms 64, attention 4 x (256 + 16) = 1088, MLP 544 + 528 = 1072 -> 2,224;
# item table 56 x 16 = 896, output bias 56, positions 8 x 16 = 128, final_ln 32
EXPECTED_COUNTS = {
    # strategy: (trainable, total, stored_params) with the same item vocabulary in both domains
    "scratch": (5560, 5560, 5560),
    "zero_shot": (0, 5560, 0),
    "full_finetune": (5560, 5560, 5560),
    "linear_probe": (952, 6456, 952),  # untied output table 896 + bias 56
    "frozen_encoder": (952, 5560, 952),  # item table 896 + bias 56
    "embedding_transfer": (5560, 5560, 5560),  # loads item table + bias, the rest fresh; all train
    "partial_freeze": (3208, 5560, 3208),  # all but positions 128 and block_0 2,224
    "reuse_bottom": (3208, 5560, 3208),
    "adapter": (648, 6152, 648),  # 2 blocks x 2 x (16*4+4 + 4*16+16) = 592, + bias 56
    "lora": (312, 5816, 312),  # 2 blocks x {query, value} x (16*2 + 2*16) = 256, + 56
    "prompt": (156, 5660, 156),  # 2 blocks x (3 prompts x 16 + 2 gates) = 100, + 56
    "bitfit": (440, 5560, 440),  # per block 176 (LN 64, attn 64, MLP 48) x 2, final_ln 32, + 56
    "patch": (352, 5856, 352),  # 2 blocks x (16*4+4 + 4*16+16) = 296, + 56
    "dann": (6713, 6713, 6713),  # everything + the discriminator 16*64+64 + 64*1+1 = 1,153
    # 5,560 + the discriminator 1,153 + per domain (2) a private SASRec 5,560 and its gate 16*16 = 18,345
    "shared_private": (18345, 18345, 18345),
    "distill": (5560, 5560, 5560),  # a fresh student: everything
    "prune": (5560, 5560, 5560),  # fine-tunes everything (pruned entries are zeroed by masks)
    "multi_domain": (6184, 6184, 6184),  # + per domain (2): head transform 16*16 + output bias 56
    # merged (default): + the source items' table 56 x 16 = 896 (a copy of the pretrained one, so
    # stored) + 2 domain embeddings 32
    "cross_user": (6488, 6488, 6488),
    "l2sp": (5560, 5560, 5560),  # full fine-tuning; the pull toward the start is train state, not params
}


TEXT_ITEMS_ONLY = ("adaptor_only",)  # presets of text-based items (tests/test_text_items.py counts them)


def test_every_registered_strategy_has_an_expected_count():
  assert sorted(list(EXPECTED_COUNTS) + list(TEXT_ITEMS_ONLY)) == sorted(strategies.STRATEGIES)


@pytest.mark.parametrize("strategy", sorted(EXPECTED_COUNTS))
def test_trainable_counts_per_preset(pretrained, strategy):
  plan, _, params, report = transfer(strategy, pretrained)
  budget = plan.budget(params, report)
  trainable, total, stored = EXPECTED_COUNTS[strategy]
  assert (budget["trainable"], budget["total"], budget["stored_params"]) == (trainable, total, stored)
  assert budget["stored_bytes"] == 4 * stored
  assert budget["frozen"] == total - trainable
  assert plan.train == (strategy != "zero_shot")
  assert f"{trainable:,} of {total:,} params" in plan.budget_summary(budget)


def test_stored_bytes_count_remapped_and_fresh_params(pretrained):
  # a different target vocabulary: the frozen item table is a new array the target must keep
  plan, _, params, report = transfer("adapter", pretrained, target_keys=KEYS[::-1])
  budget = plan.budget(params, report)
  assert budget["stored_params"] == 648 + 896 and "item_embed/embedding" not in report["shared"]
  # reuse_bottom: block_1 is fresh, so not shared even though it trains anyway
  plan, _, params, report = transfer("reuse_bottom", pretrained)
  assert all(p.startswith("block_1/") for p in report["fresh"]) and len(report["fresh"]) == 16


# --- frozen params: bit-identical and stateless through the real sharded loop ------------------

def _mesh(shape):
  n = int(np.prod(shape))
  return jax.make_mesh(shape, ("data", "model"), devices=jax.devices()[:n],
                       axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _adapter_state(pretrained, mesh):
  """The loop's own sharded state creation with the adapter preset's optimizer."""
  from xrec.train.step import create_state, make_train_step
  from xrec import sharding as SH
  plan, module, params, _ = transfer("adapter", pretrained, options={"train_item_embeddings": "never"})
  module = module.clone(encoder=module.encoder.clone(dropout=0.0))  # no dropout: a faster compile
  cfg = base_config()
  cfg.optim.update(dict(warmup_fraction=0.1, weight_decay=0.1, lr=1e-2))  # decay must not touch frozen params
  tx = plan.make_optimizer(lambda: optimizer.make_optimizer(cfg.optim, 10)[0], params)
  # create_state derives optimizer-state shardings with schedule.opt_state_shardings, which keeps
  # the MaskedNodes of frozen params (a bare tree_map_params(lambda _, s: s) cannot)
  state, state_sh = create_state(module, tx, MAX_LEN, 0, mesh, SH.logical_rules(cfg.sharding.rules))
  state["params"] = jax.device_put(params, state_sh["params"])
  return plan, module, tx, cfg, state, state_sh


def test_frozen_params_bit_identical_and_stateless_in_loop_step(pretrained):
  from xrec.train.step import create_state, make_train_step
  from xrec import sharding as SH
  mesh = _mesh((1, 1))
  plan, module, tx, cfg, state, state_sh = _adapter_state(pretrained, mesh)
  mults = schedules.resolve(state["params"], plan.schedule)
  frozen = sorted(p for p, m in mults.items() if m is None)
  trainable = sorted(p for p, m in mults.items() if m is not None)

  # no optimizer state for frozen params: Adam's mu and nu cover exactly the trainable ones
  state_names = [name for name, leaf in _names(state["opt_state"]) if np.ndim(leaf) > 0]
  assert sorted(n.split("/mu/")[1] for n in state_names if "/mu/" in n) == trainable
  assert sorted(n.split("/nu/")[1] for n in state_names if "/nu/" in n) == trainable
  state_size = sum(int(np.prod(np.shape(x))) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x))
  assert state_size == 2 * 648

  before = common.flatten(jax.device_get(state["params"]))
  from xrec.train import objectives
  step = make_train_step(module, tx, objectives.assemble(cfg.objective, True), NUM_ITEMS, state_sh, mesh)
  rng = np.random.default_rng(0)
  for _ in range(3):
    seq = rng.integers(1, NUM_ITEMS + 1, (4, MAX_LEN + 1)).astype(np.int32)
    batch = SH.put_batch({"target": {"inputs": seq[:, :-1], "targets": seq[:, 1:], "items": seq[:, 1:]}}, mesh)
    state, stats = step(state, batch, jax.random.key(0))
  after = common.flatten(jax.device_get(state["params"]))
  assert int(state["step"]) == 3 and np.isfinite(float(stats["loss"]))
  for path in frozen:
    assert after[path].tobytes() == before[path].tobytes(), path
  for path in ("inserted/block_0/attn/adapter/up/kernel", "inserted/block_1/mlp/adapter/up/kernel", "output_bias"):
    assert not np.array_equal(after[path], before[path]), path


def test_masked_optimizer_state_shardings_on_2x2_mesh(pretrained):
  # the loop's derivation (eval_shape -> param shardings -> opt_state_shardings), without the compile
  from xrec import sharding as SH
  plan, module, params, _ = transfer("adapter", pretrained)
  mesh = _mesh((2, 2))
  tx = plan.make_optimizer(lambda: optimizer.make_optimizer(base_config().optim, 10)[0], params)
  boxed = jax.eval_shape(lambda: module.init({"params": jax.random.key(0)}, INPUTS)["params"])
  param_sh = SH.param_shardings(boxed, mesh, SH.logical_rules(base_config().sharding.rules))
  abstract = jax.eval_shape(tx.init, nn.unbox(boxed))
  opt_sh = schedules.opt_state_shardings(tx, abstract, param_sh, SH.replicated(mesh))
  assert jax.tree.structure(opt_sh) == jax.tree.structure(abstract)
  bias_sh = [(n, sh) for n, sh in _names(opt_sh) if n.endswith("/output_bias")]
  assert len(bias_sh) == 2 and all(sh.spec[0] == "model" for _, sh in bias_sh)  # mu, nu split on vocab
  assert not [n for n, _ in _names(opt_sh) if "item_embed" in n]  # frozen: no state, no sharding


def _names(tree):
  from xrec.transfer.tree import names_and_leaves
  return names_and_leaves(tree)


def test_opt_state_shardings_match_plain_optimizer_for_unfrozen_schedule():
  params = {"a": {"kernel": jnp.ones((4, 2))}, "b": jnp.ones((3,))}
  tx = schedules.make_transfer_optimizer(lambda: optax.adam(1e-3), [(".*", 1.0)], params)
  state = jax.eval_shape(tx.init, params)
  shardings = schedules.opt_state_shardings(tx, state, {"a": {"kernel": "A"}, "b": "B"}, "R")
  assert jax.tree.structure(shardings) == jax.tree.structure(state)
  assert sorted(set(jax.tree.leaves(shardings))) == ["A", "B", "R"]


# --- schedule: coverage, first match, multipliers, layer-wise decay ----------------------------

def test_schedule_coverage_error_lists_unmatched_paths(pretrained):
  with pytest.raises(ValueError, match=r"params match no trainable-schedule rule") as e:
    schedules.make_transfer_optimizer(optax.sgd, [("block_\\d+/.*", 1.0), ("item_embed/.*", None)], pretrained)
  message = str(e.value)
  for path in ("final_ln/bias", "final_ln/scale", "output_bias", "pos_embed/embedding"):
    assert path in message
  assert "block_0/attn/query/kernel" not in message
  with pytest.raises(ValueError, match=r"must be > 0, or None to freeze"):
    schedules.resolve(pretrained, [(".*", 0.0)])


def test_schedule_first_match_wins_and_multipliers_scale_updates():
  params = {"a": jnp.ones((2,)), "b": jnp.ones((2,)), "c": {"d": jnp.ones((3,))}}
  schedule = [("a", 0.5), ("b", None), ("c/.*", 2.0), ("a", None), (".*", None)]
  assert schedules.resolve(params, schedule) == {"a": 0.5, "b": None, "c/d": 2.0}
  tx = schedules.make_transfer_optimizer(lambda: optax.sgd(1.0), schedule, params)
  grads = {"a": jnp.full((2,), 3.0), "b": jnp.full((2,), 3.0), "c": {"d": jnp.full((3,), 3.0)}}
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["a"], [-1.5, -1.5])
  np.testing.assert_array_equal(updates["b"], [0.0, 0.0])
  np.testing.assert_array_equal(updates["c"]["d"], [-6.0] * 3)


def test_layerwise_decay_rules(pretrained):
  rules = schedules.layerwise_decay(tiny_model().roles(), decay=0.5, base_mult=0.8)
  mults = schedules.resolve(pretrained, rules)
  assert mults["block_1/attn/query/kernel"] == pytest.approx(0.8)
  assert mults["block_0/mlp/wi/kernel"] == pytest.approx(0.4)
  assert mults["pos_embed/embedding"] == pytest.approx(0.2)
  assert mults["item_embed/embedding"] == mults["final_ln/scale"] == pytest.approx(0.8)
  _, plan = bound("full_finetune", {"layerwise_decay": 0.5})
  assert schedules.resolve(pretrained, plan.schedule)["block_0/attn/out/bias"] == pytest.approx(0.5)
  with pytest.raises(ValueError, match=r"decay must be in \(0, 1\]"):
    schedules.layerwise_decay(tiny_model().roles(), 1.5)


def test_zero_shot_optimizer_changes_nothing(pretrained):
  plan, module, params, _ = transfer("zero_shot", pretrained)
  tx = plan.make_optimizer(lambda: optax.adam(1.0), params)
  opt_state = tx.init(params)
  assert not [x for x in jax.tree.leaves(opt_state) if np.ndim(x)]
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, opt_state, params)
  assert all(not np.any(u) for u in jax.tree.leaves(updates))


# --- item vocabulary by key --------------------------------------------------------------------

def test_shuffled_target_vocabulary_gets_rows_by_key(pretrained):
  rng = np.random.default_rng(1)
  target = list(rng.permutation(KEYS[:30])) + ["new_a", "new_b"]  # 30 shared, 2 unseen, shuffled
  plan, _, params, report = transfer("frozen_encoder", pretrained, target_keys=target, vocab=40,
                                     options={"unseen_items": "zero"})
  src_table = pretrained["item_embed"]["embedding"]
  src_bias = pretrained["output_bias"]
  table, bias = params["item_embed"]["embedding"], params["output_bias"]
  assert table.shape == (40, 16) and bias.shape == (40,)
  for target_id, key in enumerate(target, start=1):
    if key in KEYS:
      source_id = KEYS.index(key) + 1
      np.testing.assert_array_equal(table[target_id], src_table[source_id], err_msg=key)
      assert bias[target_id] == src_bias[source_id]
    else:
      assert not np.any(table[target_id]) and bias[target_id] == 0.0
  np.testing.assert_array_equal(table[0], src_table[0])  # padding row
  assert report["items"] == {"source_items": 50, "target_items": 32, "overlap": 30, "unseen": 2,
                             "target_fraction_seen": 30 / 32, "source_fraction_used": 30 / 50,
                             "unseen_init": "zero", "identity": False}


@pytest.mark.parametrize("rule", ["random", "mean", "zero"])
def test_unseen_item_rules_and_sharding_padding_rows(rule):
  from xrec.transfer import vocab as V
  rng = np.random.default_rng(0)
  pretrained = rng.normal(size=(8, 3)).astype(np.float32)  # 5 items + padding + 2 sharding rows
  fresh = rng.normal(size=(8, 3)).astype(np.float32)  # 4 target items + padding + 3 sharding rows
  rows, report = V.map_item_rows(pretrained, fresh, ["a", "b", "c", "d", "e"], ["e", "x", "a", "y"], rule)
  np.testing.assert_array_equal(rows[1], pretrained[5])  # 'e'
  np.testing.assert_array_equal(rows[3], pretrained[1])  # 'a'
  real = pretrained[1:6].astype(np.float64)  # the 5 source items' rows
  unseen = fresh[[2, 4]].astype(np.float64)
  # random: fresh rows standardised per dimension, on the pretrained rows' mean and std
  moment_matched = real.mean(0) + (unseen - unseen.mean(0)) / unseen.std(0) * real.std(0)
  want_unseen = {"random": moment_matched, "zero": np.zeros((2, 3)),
                 "mean": np.repeat(real.mean(0, keepdims=True), 2, 0)}[rule]
  np.testing.assert_allclose(rows[[2, 4]], want_unseen, rtol=1e-5)
  if rule == "random":  # distinct rows (mean gives every unseen item the same row)
    assert not np.allclose(rows[2], rows[4])
    np.testing.assert_allclose(rows[[2, 4]].std(0), real.std(0), rtol=1e-5)
  np.testing.assert_array_equal(rows[5:], fresh[5:])  # sharding padding keeps the fresh init
  assert (report["overlap"], report["unseen"], report["target_fraction_seen"]) == (2, 2, 0.5)
  with pytest.raises(ValueError, match=r"Unknown unseen-item rule 'avg'; valid: \['random', 'mean', 'zero'\]"):
    V.map_item_rows(pretrained, fresh, ["a"], ["a"], "avg")
  with pytest.raises(ValueError, match=r"item key 'a' appears twice \(ids 1 and 2\)"):
    V.map_item_rows(pretrained, fresh, ["a", "a"], ["a"], rule)


def test_item_tables_need_keys(pretrained):
  _, plan = bound("full_finetune")
  with pytest.raises(ValueError, match=r"item_embed/embedding: item tables move by raw item key"):
    plan.init_params(init(tiny_model()), pretrained, None, None)


def test_position_resize_keeps_most_recent_positions(pretrained):
  from xrec.transfer import vocab as V
  src = pretrained["pos_embed"]["embedding"]  # [8, 16]
  plan, module, params, report = transfer("full_finetune", pretrained)  # same max_len: unchanged
  np.testing.assert_array_equal(params["pos_embed"]["embedding"], src)
  assert report["positions"] == {"source_max_len": 8, "target_max_len": 8}

  def fresh_with_max_len(max_len):  # the target model's init differs only in the position table
    fresh = init(tiny_model(), seed=3)
    fresh["pos_embed"] = {"embedding": np.random.default_rng(max_len).normal(size=(max_len, 16))
                          .astype(np.float32)}
    return fresh

  params, report = plan.init_params(fresh_with_max_len(5), pretrained, KEYS, KEYS)
  np.testing.assert_array_equal(params["pos_embed"]["embedding"], src[3:])  # last rows kept
  assert report["positions"] == {"source_max_len": 8, "target_max_len": 5}
  assert "pos_embed/embedding" not in report["shared"]
  long_fresh = fresh_with_max_len(11)
  params, _ = plan.init_params(long_fresh, pretrained, KEYS, KEYS)
  np.testing.assert_array_equal(params["pos_embed"]["embedding"][3:], src)  # at the end
  np.testing.assert_array_equal(params["pos_embed"]["embedding"][:3],
                                long_fresh["pos_embed"]["embedding"][:3])  # fresh rows in front
  with pytest.raises(ValueError, match="position rows differ"):
    V.resize_positions(np.zeros((4, 3)), np.zeros((4, 2)))


def test_left_counted_positions_resize_from_the_start_and_a_layout_mismatch_is_refused(pretrained):
  """model.<name>.positions="left" (Roles.positions_from "start"): row 0 is the window's oldest item
  in both tables, so a shorter window keeps the first rows and a longer one adds fresh rows at the
  end; a source counted from the other end is refused, naming the field (its rows mean other slots)."""
  from xrec.transfer import SourceEncoder
  from xrec.transfer import vocab as V
  src = pretrained["pos_embed"]["embedding"]  # [8, 16]
  _, plan = bound("full_finetune", positions="left")
  left_source = SourceEncoder("SASRec", tiny_model(positions="left").roles())
  assert left_source.roles.positions_from == "start" and tiny_model().roles().positions_from == "end"
  for max_len in (5, 11):
    fresh = init(tiny_model(), seed=3)
    fresh["pos_embed"] = {"embedding": np.random.default_rng(max_len).normal(size=(max_len, 16)).astype(np.float32)}
    params, report = plan.init_params(fresh, pretrained, KEYS, KEYS, source=left_source)
    got = params["pos_embed"]["embedding"]
    keep = min(max_len, 8)
    np.testing.assert_array_equal(got[:keep], src[:keep])  # the oldest slots line up
    np.testing.assert_array_equal(got[keep:], fresh["pos_embed"]["embedding"][keep:])  # new rows at the end
    assert report["positions"] == {"source_max_len": 8, "target_max_len": max_len}
  np.testing.assert_array_equal(V.resize_positions(src, np.zeros((5, 16), np.float32), "start"), src[:5])
  with pytest.raises(ValueError, match=r"positions counted from 'middle'; valid: \['end', 'start'\]"):
    V.resize_positions(src, src, "middle")
  with pytest.raises(ValueError, match=r"pos_embed/embedding: the pretrained model's position rows count from "
                                       r"the end of the window, the target's from the start .*model.<name>.positions"):
    plan.init_params(init(tiny_model()), pretrained, KEYS, KEYS, source=SourceEncoder("SASRec", tiny_model().roles()))


# --- strict loading: +/- errors, rename, dont_load, graft, subtree -----------------------------

def test_unexplained_mismatch_lists_plus_and_minus_paths(pretrained):
  from xrec.transfer import load as L
  model = {"enc": {"w": np.zeros((2, 3)), "b": np.zeros((3,))}, "new": np.zeros((4,))}
  ckpt = {"enc": {"w": np.ones((2, 4)), "b": np.ones((3,))}, "old": np.ones((5,))}
  with pytest.raises(ValueError) as e:
    L.load_params(model, ckpt)
  message = str(e.value)
  assert "+ old (5,)" in message and "- new (4,)" in message
  assert "+ enc/w (2, 4)" in message and "- enc/w (2, 3)" in message
  assert "enc/b" not in message
  # rename + dont_load explain it
  params, report = L.load_params(model, {"enc": {"w": np.ones((2, 3)), "b": np.ones((3,))},
                                         "legacy": {"new": np.ones((4,))}},
                                 rename=[("legacy/(.*)", r"\1")], dont_load=[])
  np.testing.assert_array_equal(params["new"], np.ones(4))
  params, report = L.load_params(model, ckpt, dont_load=["old", "new", "enc/w"])
  np.testing.assert_array_equal(params["enc"]["w"], np.zeros((2, 3)))  # fresh init kept
  np.testing.assert_array_equal(params["enc"]["b"], np.ones(3))
  assert report["fresh"] == ["enc/w", "new"] and report["loaded"] == ["enc/b"]
  # a preset without its dont_load rule fails naming the inserted module's paths
  import dataclasses
  module, plan = bound("adapter")
  bare = dataclasses.replace(plan, strategy=dataclasses.replace(plan.strategy, dont_load=()))
  with pytest.raises(ValueError, match=r"- inserted/block_0/attn/adapter/down/kernel \(16, 4\)"):
    bare.init_params(init(module), pretrained, KEYS, KEYS)


def test_rename_collision_and_tree_get_did_you_mean(pretrained):
  from xrec.transfer import tree as T
  with pytest.raises(ValueError, match=r"'a/x' and 'b/x' both become 'x'"):
    T.rename_paths({"a/x": 1, "b/x": 2}, [("[ab]/(.*)", r"\1")])
  with pytest.raises(KeyError, match=r"No param path 'block_0/atn'; did you mean 'block_0/attn'"):
    T.tree_get(pretrained, "block_0/atn")
  assert T.tree_get(pretrained, "block_1/attn/query/kernel").shape == (16, 2, 8)
  doubled = T.tree_map_with_regex(lambda x, m: x * m, pretrained, [(".*/bias", 2.0)])
  np.testing.assert_array_equal(doubled["final_ln"]["bias"], 2 * pretrained["final_ln"]["bias"])
  np.testing.assert_array_equal(doubled["final_ln"]["scale"], pretrained["final_ln"]["scale"])


def test_graft_one_pretrained_block_into_several_places(pretrained):
  from xrec.transfer import load as L
  # a 3-block model whose every block starts from pretrained block_1, from a "ckpt:subtree" source
  store = {"/runs/pretrain": {"encoder": pretrained}}
  source = L.load_source("/runs/pretrain:encoder", store.__getitem__)
  model = tiny_model(num_layers=3)
  params, report = L.load_params(
      init(model), source, graft=[("block_0", "block_1"), ("block_2", "block_1")],
      transforms=())
  for i in range(3):
    for path, value in common.flatten(pretrained["block_1"]).items():
      np.testing.assert_array_equal(common.flatten(params[f"block_{i}"])[path], value)
  assert len(report["shared"]) == len(report["loaded"]) == len(common.flatten(params))
  with pytest.raises(KeyError, match=r"graft 'block_2' <- 'blok_1'.*did you mean 'block_1'"):
    L.load_params(init(model), source, graft=[("block_2", "blok_1")])
  # tree-level graft (e.g. the same encoder for two domains) keeps the structure
  grafted = L.graft(pretrained, "block_0", ["block_1"])
  np.testing.assert_array_equal(grafted["block_1"]["mlp"]["wi"]["kernel"],
                                pretrained["block_0"]["mlp"]["wi"]["kernel"])
  with pytest.raises(ValueError, match=r"subtrees differ"):
    L.graft(pretrained, "block_0", ["final_ln"])
  assert L.split_source("/a/b:c/d") == ("/a/b", "c/d") and L.split_source("/a/b") == ("/a/b", "")


def test_source_subtree_option(pretrained):
  _, plan = bound("full_finetune", {"source_subtree": "towers/sasrec"})
  params, report = plan.init_params(init(tiny_model()), {"towers": {"sasrec": pretrained}}, KEYS, KEYS)
  assert report["items"]["identity"] and len(report["shared"]) == len(report["loaded"])
  np.testing.assert_array_equal(params["block_0"]["attn"]["key"]["kernel"],
                                pretrained["block_0"]["attn"]["key"]["kernel"])


def test_reuse_bottom_loads_bottom_blocks_from_a_deeper_checkpoint(pretrained):
  deep = init(tiny_model(num_layers=3), seed=5)
  _, plan = bound("reuse_bottom", {"shared_layers.bottom_blocks": 1})
  fresh = init(tiny_model())
  params, report = plan.init_params(fresh, deep, KEYS, KEYS)
  np.testing.assert_array_equal(params["block_0"]["mlp"]["wo"]["kernel"], deep["block_0"]["mlp"]["wo"]["kernel"])
  np.testing.assert_array_equal(params["block_1"]["mlp"]["wo"]["kernel"], fresh["block_1"]["mlp"]["wo"]["kernel"])
  mults = schedules.resolve(params, plan.schedule)
  assert mults["block_0/attn/query/kernel"] is None and mults["pos_embed/embedding"] is None
  assert mults["block_1/attn/query/kernel"] == 1.0 and mults["item_embed/embedding"] == 1.0


# --- registry and options ----------------------------------------------------------------------

def test_strategy_typo_lists_valid_names():
  with pytest.raises(ValueError, match=r"Unknown transfer strategy 'adaptr'; valid: \['adapter', "
                                       r"'adaptor_only', 'bitfit', .*'zero_shot'\]"):
    transfer_apply.prepare(tiny_config("adaptr").transfer)


def test_a_preset_that_does_not_apply_names_those_that_do():
  from xrec.models.gru4rec import GRU4Rec
  gru = GRU4Rec(vocab_size=VOCAB, max_len=MAX_LEN, num_items=NUM_ITEMS, embed_dim=16)
  plan = transfer_apply.prepare(tiny_config("prompt").transfer)
  with pytest.raises(ValueError, match=r"transfer.strategy='prompt' does not apply to this encoder; "
                                       r"strategies that apply: \[.*'adapter'.*'patch'.*\]"):
    plan.bind(gru)
  assert "lora" not in strategies.applicable(gru.roles()) and "lora" in strategies.applicable(tiny_model().roles())


@pytest.mark.parametrize("strategy,options,pattern", [
    ("partial_freeze", {"shared_layers.bottom_blocks": 3},
     r"transfer.shared_layers.bottom_blocks=3 must be an integer in \[0, 2\]"),
    ("adapter", {"adapter.dim": 0}, r"transfer.adapter.dim must be a positive integer, got 0"),
    ("adapter", {"adapter.kind": "series"}, r"adapter.kind 'series'; valid: \['serial', 'parallel'\]"),
    ("lora", {"lora.targets": ("query", "q")}, r"unknown or empty \['q'\]; valid: \['query'"),
    ("frozen_encoder", {"unseen_items": "avg"}, r"transfer.unseen_items 'avg'; valid: \['random'"),
    ("full_finetune", {"lr_mult": 0.0}, r"transfer.lr_mult=0.0 must be > 0"),
])
def test_bad_options_fail_before_any_work(strategy, options, pattern):
  with pytest.raises(ValueError, match=pattern):
    bound(strategy, options)


def test_bitfit_trains_only_biases_and_norms(pretrained):
  plan, _, params, _ = transfer("bitfit", pretrained)
  trained = sorted(p for p, m in schedules.resolve(params, plan.schedule).items() if m is not None)
  assert trained and all(p.endswith(("/bias", "/scale")) or p == "output_bias" for p in trained)


def test_peft_presets_can_train_item_tables(pretrained):
  plan, _, params, report = transfer("lora", pretrained, options={"train_item_embeddings": "always"})
  assert plan.budget(params, report)["trainable"] == 312 + 896


def test_config_rename_dont_load_and_multipliers(pretrained):
  # a checkpoint that stored the encoder under 'sasrec/': renamed back by config, final_ln kept fresh
  prefixed = {"sasrec": pretrained}
  module, plan = bound("adapter", {"rename": ((r"sasrec/(.*)", r"\1"),), "dont_load": (r"final_ln/.*",),
                                   "lr_mult": 0.3, "new_lr_mult": 3.0})
  fresh = init(module, seed=2)
  params, report = plan.init_params(fresh, prefixed, KEYS, KEYS)
  np.testing.assert_array_equal(params["final_ln"]["scale"], fresh["final_ln"]["scale"])
  np.testing.assert_array_equal(params["block_1"]["mlp"]["wi"]["kernel"],
                                pretrained["block_1"]["mlp"]["wi"]["kernel"])
  assert "final_ln/scale" in report["fresh"] and "block_1/mlp/wi/kernel" in report["shared"]
  mults = schedules.resolve(params, plan.schedule)
  assert mults["inserted/block_0/mlp/adapter/up/kernel"] == 3.0 and mults["output_bias"] == 0.3
  assert mults["final_ln/scale"] is None
  with pytest.raises(ValueError, match=r"transfer.rename: invalid regex '\('"):
    transfer_apply.prepare(tiny_config("adapter", {"rename": (("(", "x"),)}).transfer)


def test_inserted_modules_carry_logical_axes_for_sharding():
  from xrec import sharding as SH
  from xrec.transfer import insert
  specs = {}
  for kind, opts in (("lora", {"rank": 2, "targets": insert.LORA_TARGETS}), ("adapter", {"dim": 4, "kind": "serial"}),
                     ("prompt", {"num_prompts": 3})):
    module = insert.wrap(tiny_model(), insert.InsertSpec(kind, tuple(sorted(opts.items()))))
    boxed = jax.eval_shape(lambda m=module: m.init({"params": jax.random.key(0)}, INPUTS)["params"])
    specs.update(common.flatten(nn.get_partition_spec(boxed)))  # logical names per param
    shardings = SH.param_shardings(boxed, _mesh((2, 2)), SH.logical_rules(base_config().sharding.rules))
    if kind == "prompt":  # the gate [heads] is split over 'model' like the heads it gates
      assert common.flatten(shardings)["inserted/block_1/attn/prompt/gate"].spec == jax.sharding.PartitionSpec("model")
  assert specs["inserted/block_0/attn/query/lora/b/kernel"] == jax.sharding.PartitionSpec(None, "heads", "kv")
  assert specs["inserted/block_0/attn/out/lora/a/kernel"] == jax.sharding.PartitionSpec("heads", "kv", None)
  assert specs["inserted/block_1/mlp/wi/lora/b/kernel"] == jax.sharding.PartitionSpec(None, "mlp")
  assert specs["inserted/block_0/attn/adapter/up/kernel"] == jax.sharding.PartitionSpec(None, "embed")
  assert specs["inserted/block_1/attn/prompt/tokens"] == jax.sharding.PartitionSpec(None, "embed")
  assert specs["inserted/block_1/attn/prompt/gate"] == jax.sharding.PartitionSpec("heads")