"""The encoder contract on every encoder of the zoo, the strategy x encoder matrix, transfer across
encoders by role, and the objective terms."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from xrec import models
from xrec import sharding
from xrec.config import with_overrides
from xrec.defaults import base_config
from xrec.models import base, common
from xrec.config import model_config as with_model_fields
from xrec.train import objectives
from xrec.train.step import create_state, make_train_step
from xrec.train import optimizer
from xrec.transfer import apply as transfer_apply
from xrec.transfer import insert
from xrec.transfer import schedule as schedules
from xrec.transfer import strategies

NUM_ITEMS, MAX_LEN, EMBED = 30, 6, 8
KEYS = [f"i{i}" for i in range(NUM_ITEMS)]
ENCODERS = ("sasrec", "bert4rec", "gru4rec", "nextitnet", "hstu")
INPUTS = jnp.array([[0, 0, 3, 5, 7, 9], [0, 0, 0, 0, 1, 2], [4, 8, 15, 16, 23, 30]], jnp.int32)


def model_config(name, **fields):
  c = base_config()
  c.model.update(dict(name=name, max_len=MAX_LEN, embed_dim=EMBED, vocab_multiple=8, dropout=0.1))
  for transformer in ("sasrec", "bert4rec"):
    c.model[transformer].update(dict(num_layers=2, num_heads=2, mlp_dim=16))
  c.model.gru4rec.num_layers = 2
  c.model.nextitnet.update(dict(dilations=(1, 2), kernel_size=2))
  c.model.update(fields)
  return c


def build(name, **fields):
  return models.build(model_config(name, **fields).model, NUM_ITEMS)


def init(module, seed=0):
  x = jnp.ones((1, module.max_len), jnp.int32)
  return jax.device_get(nn.unbox(module.init({"params": jax.random.key(seed), "dropout": jax.random.key(seed)},
                                             x)["params"]))


def perturbed(params, seed=0):
  """'Pretrained' params: non-zero everywhere (biases, norms), so loading is visible."""
  rng = np.random.default_rng(seed)
  return common.unflatten({p: v + rng.normal(0, 0.1, v.shape).astype(v.dtype)
                           for p, v in common.flatten(params).items()})


# --- the contract ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ENCODERS)
def test_every_encoder_meets_the_contract(name):
  module = build(name)
  params = init(module)
  flat = common.flatten(params)
  hidden, table, bias = module.apply({"params": params}, INPUTS)
  assert hidden.shape == (3, MAX_LEN, EMBED) and table.shape == (module.vocab_size, EMBED)
  assert bias.shape == (module.vocab_size,)
  scores = module.apply({"params": params}, INPUTS, method="score_last")
  assert scores.shape == (3, module.vocab_size) and scores.dtype == jnp.float32
  assert module.vocab_size >= NUM_ITEMS + 1 + int(module.uses_mask_token)
  roles = module.roles()
  for path in roles.item_rows + ((roles.positions,) if roles.positions else ()):
    assert path in flat, path
  for prefix in roles.blocks + ((roles.final_norm,) if roles.final_norm else ()):
    assert any(p.startswith(prefix + "/") for p in flat), prefix
  assert roles.blocks and roles.sublayers
  # causal: position t does not see later items; bidirectional: it does
  changed = INPUTS.at[:, -1].set(11)
  h2 = module.apply({"params": params}, changed)[0]
  same_prefix = np.allclose(np.asarray(hidden[:, :-1]), np.asarray(h2[:, :-1]), atol=1e-6)
  assert same_prefix == module.causal


@pytest.mark.parametrize("name", ENCODERS)
def test_without_an_output_bias_the_scores_are_the_dot_products(name):
  with_bias, without = build(name), build(name, output_bias=False)
  params = perturbed(init(with_bias))
  bare = {k: v for k, v in params.items() if k != "output_bias"}
  assert sorted(common.flatten(init(without))) == sorted(common.flatten(bare))  # no bias param, the rest as before
  roles = without.roles()
  assert roles.output_bias is None and roles.item_rows == tuple(p for p in with_bias.roles().item_rows
                                                                if p != "output_bias")
  got = without.apply({"params": bare}, INPUTS, method="score_last")
  want = with_bias.apply({"params": params}, INPUTS, method="score_last") - params["output_bias"][None]
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
  assert not np.asarray(without.apply({"params": bare}, INPUTS)[2]).any()


def test_a_checkpoint_with_an_output_bias_does_not_fit_a_model_without_one_unless_left_behind():
  pretrained = perturbed(init(build("sasrec")), seed=1)
  _, module, plan = bound("sasrec", "full_finetune", model_fields={"output_bias": False})
  with pytest.raises(ValueError, match=r"does not fit the model.*\n\+ output_bias \(32,\)"):
    plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  _, module, plan = bound("sasrec", "full_finetune", model_fields={"output_bias": False}, dont_load=("output_bias",))
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  assert "output_bias" not in params
  np.testing.assert_array_equal(params["block_0"]["attn"]["query"]["kernel"],
                                pretrained["block_0"]["attn"]["query"]["kernel"])


def test_bert4rec_scores_the_appended_mask_token():
  module = build("bert4rec")
  params = init(module)
  masked = jnp.concatenate([INPUTS[:, 1:], jnp.full((3, 1), module.mask_token_id)], axis=1)
  hidden = module.apply({"params": params}, masked, method="encode")[:, -1]
  table, bias = module.apply({"params": params}, method="output_table")
  np.testing.assert_allclose(module.apply({"params": params}, INPUTS, method="score_last"),
                             common.score_items(hidden, table, bias), rtol=1e-5, atol=1e-6)  # float32 rounding
  assert module.mask_token_id == NUM_ITEMS + 1


def test_unknown_model_lists_the_zoo():
  assert {"bert4rec", "gru4rec", "nextitnet", "popularity", "sasrec"} <= set(models.MODELS)
  valid = re.escape(str(sorted(models.MODELS)))
  with pytest.raises(ValueError, match=rf"Unknown model 'gru'; valid: {valid}"):
    models.build(model_config("gru").model, NUM_ITEMS)


# --- the strategy x encoder matrix -------------------------------------------------------------

def transfer_config(strategy, **options):
  c = base_config()
  c.transfer.strategy = strategy
  c.transfer.adapter.dim, c.transfer.lora.rank, c.transfer.prompt.num_prompts, c.transfer.patch.dim = 4, 2, 3, 4
  return with_overrides(c, {f"transfer.{k}": v for k, v in options.items()})


def bound(name, strategy, model_fields=None, **options):
  if strategy == "cross_user":  # the trainer sets these from the data (the source model's vocab: 32 here)
    options = {"cross_user.rows": 32, "cross_user.source_dim": 5, **options}
  cfg = transfer_config(strategy, **options)
  plan = transfer_apply.prepare(cfg.transfer)
  encoder = models.build(with_model_fields(model_config(name, **(model_fields or {})).model, plan.model_fields),
                         NUM_ITEMS)
  module, plan = plan.bind(encoder)
  return encoder, module, plan


MATRIX = [(e, s) for e in ENCODERS for s in strategies.applicable(build(e).roles(), build(e).causal)]
INSERTING = [(e, s) for e, s in MATRIX if s in strategies.INSERTING]


def test_the_matrix_is_what_the_roles_allow():
  applicable = {e: strategies.applicable(build(e).roles(), build(e).causal) for e in ENCODERS}
  causal_only = {"dann", "shared_private", "distill", "multi_domain", "cross_user"}
  assert not causal_only & set(applicable["bert4rec"])
  assert all(causal_only <= set(applicable[e]) for e in ("sasrec", "gru4rec", "nextitnet"))
  for strategy in sorted(causal_only):  # refused clearly, naming what applies
    with pytest.raises(ValueError, match=rf"transfer.strategy='{strategy}' does not apply to this encoder; "
                                         r"strategies that apply: \['scratch'"):
      bound("bert4rec", strategy)
  for e in ("sasrec", "bert4rec"):
    assert set(strategies.INSERTING) <= set(applicable[e])
  for e in ("gru4rec", "nextitnet"):
    assert {"adapter", "patch"} <= set(applicable[e]) and not {"lora", "prompt"} & set(applicable[e])
  assert all(len(v) >= 11 for v in applicable.values())


@pytest.mark.parametrize("name,strategy", INSERTING)
def test_step0_identity_for_every_inserted_module(name, strategy):
  encoder, module, plan = bound(name, strategy)
  pretrained = perturbed(init(encoder, seed=1))
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  assert any(p.startswith("inserted/") for p in common.flatten(params))
  items = slice(1, NUM_ITEMS + 1)
  want = encoder.apply({"params": pretrained}, INPUTS, method="score_last")[:, items]
  got = module.apply({"params": params}, INPUTS, method="score_last")[:, items]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # and the modules are live: nudging what trains changes the function
  mults = schedules.resolve(params, plan.schedule)
  nudged = common.unflatten({p: v + 0.5 if mults[p] is not None and p.startswith("inserted/") else v
                             for p, v in common.flatten(params).items()})
  assert not np.allclose(module.apply({"params": nudged}, INPUTS, method="score_last")[:, items], want)


def _expected_trainable(strategy, flat: dict, roles: base.Roles) -> int:
  """Trainable scalars by an independent reading of each preset's docstring."""
  size = {p: int(np.prod(v.shape)) for p, v in flat.items()}
  bias = size.get(roles.output_bias, 0)  # 0: a model without one (model.output_bias=False)
  under = lambda prefixes: sum(n for p, n in size.items() if any(p == x or p.startswith(x + "/") for x in prefixes))  # noqa: E731
  tables = [roles.item_table] + ([roles.output_table] if roles.output_table else [])
  if strategy in ("scratch", "full_finetune", "embedding_transfer", "dann", "shared_private", "distill", "prune",
                  "multi_domain", "l2sp",
                  "cross_user"):  # cross_user: its default mode (merged) trains its source table too
    return sum(size.values())
  if strategy == "zero_shot":
    return 0
  if strategy == "linear_probe":
    return size[roles.output_table] + bias
  if strategy == "frozen_encoder":
    return under(tables) + bias
  if strategy in ("partial_freeze", "reuse_bottom"):  # bottom 1 block and positions frozen
    frozen = [roles.blocks[0]] + ([roles.positions] if roles.positions else [])
    return sum(size.values()) - under(frozen)
  if strategy == "bitfit":
    return sum(n for p, n in size.items() if p.endswith("bias") or p.endswith("/scale"))
  return under(["inserted"]) + bias  # adapter, lora, prompt, patch


@pytest.mark.parametrize("name,strategy", MATRIX)
def test_exact_trainable_counts(name, strategy):
  encoder, module, plan = bound(name, strategy)
  params = init(module)
  budget = plan.budget(params)
  assert budget["trainable"] == _expected_trainable(strategy, common.flatten(params), plan.roles)
  assert budget["total"] == common.param_count(params)


@pytest.mark.parametrize("strategy", strategies.applicable(build("sasrec", output_bias=False).roles(), True))
def test_every_strategy_applies_to_a_model_without_an_output_bias(strategy):
  _, module, plan = bound("sasrec", strategy, model_fields={"output_bias": False})
  params = init(module)
  assert plan.roles.output_bias is None and "output_bias" not in common.flatten(params)
  assert plan.budget(params)["trainable"] == _expected_trainable(strategy, common.flatten(params), plan.roles)


# hand-computed counts on the tiny encoders (embed 8, adapter / patch bottleneck 4): one adapter is
# 8*4+4 + 4*8+8 = 76 scalars; the output bias has 32 rows (31 ids rounded up to 8)
HAND_COUNTS = {
    ("gru4rec", "adapter"): 2 * 76 + 32,  # after each of the 2 GRU layers
    ("gru4rec", "patch"): 2 * 76 + 32,  # beside each layer
    ("nextitnet", "adapter"): 4 * 76 + 32,  # after each of the 2 convolutions of 2 blocks
    ("nextitnet", "patch"): 2 * 76 + 32,
    ("sasrec", "lora"): 2 * 2 * (8 * 2 + 2 * 8) + 32,  # query, value of 2 blocks, rank 2
}


@pytest.mark.parametrize("key", sorted(HAND_COUNTS))
def test_hand_computed_counts(key):
  _, module, plan = bound(*key)
  assert plan.budget(init(module))["trainable"] == HAND_COUNTS[key]


FROZEN_CHECK = [("gru4rec", "adapter", {}), ("nextitnet", "patch", {}), ("bert4rec", "prompt", {}),
                ("nextitnet", "frozen_encoder", {}), ("gru4rec", "partial_freeze", {}),
                ("sasrec", "frozen_encoder", {"output_bias": False})]


@pytest.mark.parametrize("name,strategy,fields", FROZEN_CHECK)
def test_frozen_params_bit_identical_and_stateless(name, strategy, fields):
  encoder, module, plan = bound(name, strategy, fields)
  pretrained = perturbed(init(encoder, seed=1))
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=1, model=1)))
  cfg = base_config()
  tx = plan.make_optimizer(lambda: optimizer.make_optimizer(cfg.optim, 10)[0], params)
  state, state_sh = create_state(module, tx, MAX_LEN, 0, mesh, sharding.logical_rules(cfg.sharding.rules))
  state["params"] = jax.device_put(params, state_sh["params"])
  mults = schedules.resolve(params, plan.schedule)
  frozen = [p for p, m in mults.items() if m is None]
  state_leaves = [x for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x)]
  assert sum(int(np.prod(np.shape(x))) for x in state_leaves) == 2 * plan.budget(params)["trainable"]
  objective = objectives.assemble(cfg.objective, encoder.causal)
  step = make_train_step(module, tx, objective, NUM_ITEMS, state_sh, mesh)
  rng = np.random.default_rng(0)
  for _ in range(2):
    seq = rng.integers(1, NUM_ITEMS + 1, (4, MAX_LEN + 1)).astype(np.int32)
    batch = sharding.put_batch({"target": {"inputs": seq[:, :-1], "targets": seq[:, 1:], "items": seq[:, 1:]}}, mesh)
    state, stats = step(state, batch, jax.random.key(0))
  assert np.isfinite(float(stats["loss"]))
  after = common.flatten(jax.device_get(state["params"]))
  before = common.flatten(params)
  for path in frozen:
    assert after[path].tobytes() == before[path].tobytes(), path
  assert any(not np.array_equal(after[p], before[p]) for p, m in mults.items() if m is not None)


# --- transfer across encoders by role ----------------------------------------------------------

@pytest.mark.parametrize("target", ["gru4rec", "nextitnet", "bert4rec"])
def test_sasrec_item_table_initialises_another_encoder(target):
  source = build("sasrec")
  pretrained = perturbed(init(source, seed=1))
  source_info = transfer_apply.SourceEncoder("SASRec", source.roles())
  encoder, module, plan = bound(target, "embedding_transfer")
  fresh = init(module, seed=2)
  target_keys = list(reversed(KEYS))  # another vocabulary order: rows move by key
  params, report = plan.init_params(fresh, pretrained, KEYS, target_keys, source_info)
  src, dst = pretrained["item_embed"]["embedding"], params["item_embed"]["embedding"]
  for target_id, key in enumerate(target_keys, start=1):
    np.testing.assert_array_equal(dst[target_id], src[KEYS.index(key) + 1])
  assert report["loaded"] == ["item_embed/embedding", "output_bias"]
  block = plan.roles.blocks[0]
  for path, value in common.flatten(params).items():
    if path.startswith(block + "/"):
      np.testing.assert_array_equal(value, common.flatten(fresh)[path])  # the encoder starts fresh
  # loading every param by path across encoders is refused, naming the preset that maps roles
  encoder, module, plan = bound(target, "full_finetune")
  with pytest.raises(ValueError, match=r"the pretrained model is a SASRec, the target a .*embedding_transfer"):
    plan.init_params(init(module), pretrained, KEYS, KEYS, source_info)


def test_no_role_that_maps_is_an_error():
  pop = build("popularity")
  source = transfer_apply.SourceEncoder("Popularity", pop.roles())
  encoder, module, plan = bound("gru4rec", "embedding_transfer")
  params = init(module)
  with pytest.raises(ValueError, match=r"no role of .* maps from Popularity to GRU4Rec"):
    plan.init_params(params, {"something": np.zeros(3)}, KEYS, KEYS, source)


def test_remat_with_inserted_modules_is_a_clear_error():
  plan = transfer_apply.prepare(transfer_config("adapter").transfer)
  with pytest.raises(ValueError, match=r"model.remat .* set model.remat=False"):
    plan.bind(build("sasrec", remat=True))


# --- objective terms ---------------------------------------------------------------------------

def _batches(seed=0):
  seq = np.random.default_rng(seed).integers(1, NUM_ITEMS + 1, (4, MAX_LEN + 1)).astype(np.int32)
  seq[0, :3] = 0  # a padded row
  return {"target": {"inputs": jnp.asarray(seq[:, :-1]), "targets": jnp.asarray(seq[:, 1:]),
                     "items": jnp.asarray(seq[:, 1:])}}


@pytest.mark.parametrize("name,terms", [("sasrec", ()), ("sasrec", (("sampled_softmax", 1.0), ("bce", 0.5))),
                                        ("bert4rec", ()), ("gru4rec", (("full_softmax", 2.0),))])
def test_objective_terms_sum_and_are_reported_one_by_one(name, terms):
  cfg = base_config()
  cfg.objective.terms = terms
  module = build(name)
  objective = objectives.assemble(cfg.objective, module.causal)
  params = init(module)
  total, parts = objective.loss(module, params, _batches(), jax.random.key(0), NUM_ITEMS)
  weights = dict((t.name, w) for t, w in objective.terms)
  assert set(parts) == set(weights) | {f"{k}/count" for k in weights} and np.isfinite(float(total))
  assert float(total) == pytest.approx(sum(weights[k] * float(parts[k]) for k in weights), rel=1e-5)
  # each term's count: the positions its loss averaged over (next-item terms: every target > 0)
  targets = int((np.asarray(_batches()["target"]["targets"]) > 0).sum())
  for k in weights:
    assert 0 < float(parts[f"{k}/count"]) <= targets
    if k in ("full_softmax", "sampled_softmax", "bce"):
      assert float(parts[f"{k}/count"]) == targets
  assert objective.names == ([t for t, _ in terms] or (["full_softmax"] if module.causal else ["cloze"]))
  # deterministic per rng: the same step gives the same loss, another step another (dropout, masks)
  again, _ = objective.loss(module, params, _batches(), jax.random.key(0), NUM_ITEMS)
  other, _ = objective.loss(module, params, _batches(), jax.random.key(1), NUM_ITEMS)
  assert float(again) == float(total) and float(other) != float(total)


def test_cloze_masks_valid_positions_and_always_the_newest_item():
  module = build("bert4rec")
  seen = {}

  class Spy:  # records the inputs the term feeds the model
    def apply(self, variables, inputs, **kwargs):
      seen["inputs"] = np.asarray(inputs)
      return module.apply(variables, inputs, **kwargs)

  cfg = base_config()
  cfg.objective.cloze.prefix_prob = 0.0  # whole windows
  ctx = objectives.TermContext(Spy(), init(module), _batches(), jax.random.key(3), NUM_ITEMS, cfg.objective.cloze)
  loss, count = objectives.cloze(ctx)
  items = np.asarray(_batches()["target"]["items"])
  masked = seen["inputs"] == NUM_ITEMS + 1
  assert masked[:, -1].all() and not masked[items == 0].any()  # newest item always, padding never
  assert (seen["inputs"][~masked] == items[~masked]).all() and int(count) == masked.sum()

  cfg.objective.cloze.update(dict(prefix_prob=1.0, mask_prob=0.01))  # cut windows: newest item of a prefix
  cut = set()
  for seed in range(8):
    ctx = objectives.TermContext(Spy(), init(module), _batches(), jax.random.key(seed), NUM_ITEMS, cfg.objective.cloze)
    objectives.cloze(ctx)
    inputs = seen["inputs"]
    assert (inputs[:, -1] == NUM_ITEMS + 1).all()
    for row, full in zip(inputs, items):
      kept = row[row > 0]
      seq = full[full > 0]
      assert 2 <= len(kept) <= len(seq)
      visible = kept != NUM_ITEMS + 1
      assert (kept[visible] == seq[:len(kept)][visible]).all()  # a prefix of the history, right-aligned
      cut.add(len(seq) - len(kept))
  assert len(cut) > 1  # different rows and steps cut at different points


def test_drop_newest_keeps_prefixes_right_aligned():
  items = jnp.asarray([[0, 0, 3, 4, 5, 6], [0, 0, 0, 0, 7, 8], [1, 2, 3, 4, 5, 6]])
  assert (np.asarray(objectives.drop_newest(items, jax.random.key(0), 0.0)) == np.asarray(items)).all()
  lengths = set()
  for seed in range(20):
    out = np.asarray(objectives.drop_newest(items, jax.random.key(seed), 1.0))
    assert (out[1] == np.asarray(items[1])).all()  # two items: nothing may be dropped
    for row, full in zip(out, np.asarray(items)):
      kept, seq = row[row > 0], full[full > 0]
      assert (row[len(row) - len(kept):] == kept).all() and (kept == seq[:len(kept)]).all() and len(kept) >= 2
    lengths.add(int((out[2] > 0).sum()))
  assert lengths == {2, 3, 4, 5, 6}


def test_bad_objectives_fail_naming_what_is_valid():
  cfg = base_config()
  cfg.objective.terms = (("cloze", 1.0),)
  with pytest.raises(ValueError, match=r"objective term 'cloze' needs a bidirectional encoder; SASRec is causal: "
                                       r"terms that apply: \[.*'bce'.*'full_softmax'.*'sampled_softmax'.*\]"):
    objectives.assemble(cfg.objective, True, encoder="SASRec")
  cfg.objective.terms = (("full_softmax", 1.0),)
  with pytest.raises(ValueError, match=r"needs a causal encoder; BERT4Rec is bidirectional"):
    objectives.assemble(cfg.objective, False, encoder="BERT4Rec")
  cfg.objective.terms = (("ful_softmax", 1.0),)
  with pytest.raises(ValueError, match=r"Unknown objective term 'ful_softmax'; valid: \["):
    objectives.assemble(cfg.objective, True)
  term = objectives.Term("from_source", ("target", "source"), "any", objectives.cloze)
  objectives.TERMS["from_source"] = term
  try:
    cfg.objective.terms = (("from_source", 1.0),)
    with pytest.raises(ValueError, match=r"reads the stream\(s\) \['source'\], which this run does not provide; "
                                         r"available: \['target'\]"):
      objectives.assemble(cfg.objective, True)
  finally:
    del objectives.TERMS["from_source"]


@pytest.mark.parametrize("name", ["gru4rec", "nextitnet", "sasrec"])
def test_states_do_not_depend_on_left_padding(name):
  """The same items in a longer window (more padding in front) give the same last state."""
  short, long = build(name), build(name, max_len=MAX_LEN + 3)
  params = perturbed(init(long), seed=4)  # trained-like: non-zero biases and norms
  if name == "sasrec":  # positions count from the end: the short model uses the last MAX_LEN rows
    short_params = dict(params, pos_embed={"embedding": params["pos_embed"]["embedding"][3:]})
  else:
    short_params = params
  x = INPUTS[1:2]  # 2 items, 4 padding
  padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), x], axis=1)
  np.testing.assert_allclose(short.apply({"params": short_params}, x, method="encode")[:, -1],
                             long.apply({"params": params}, padded, method="encode")[:, -1], atol=1e-5)


# --- domain-adversarial transfer -----------------------------------------------------------------

def test_gradient_reversal_and_the_ganin_schedule():
  f = lambda x, lam: jnp.sum(objectives.reverse_gradient(x, lam) ** 2)  # noqa: E731
  x = jnp.array([1.0, -2.0, 3.0])
  np.testing.assert_allclose(jax.grad(f)(x, 0.5), -0.5 * 2 * x)  # d/dx x^2 = 2x, reversed and scaled
  assert float(f(x, 0.5)) == pytest.approx(14.0)  # identity forward
  lams = [float(objectives.ganin_lambda(p)) for p in (0.0, 0.1, 0.5, 1.0)]
  assert lams[0] == 0.0 and lams == sorted(lams) and lams[-1] == pytest.approx(2 / (1 + np.exp(-10)) - 1)


def test_dann_discriminator_learns_and_reports_accuracy():
  encoder, module, plan = bound("nextitnet", "dann")
  params = init(module)
  assert any(p.startswith("heads/domain_discriminator/") for p in common.flatten(params))
  assert schedules.resolve(params, plan.schedule)["heads/domain_discriminator/out/kernel"] == 1.0
  cfg = base_config()
  objective = objectives.assemble(cfg.objective, True, ("target", "source"), "NextItNet", plan.strategy.terms)
  assert objective.names == ["full_softmax", "source_full_softmax", "domain_adversarial"]
  batches = {"target": _batches(0)["target"], "source": _batches(1)["target"]}
  total, parts = objective.loss(module, params, batches, jax.random.key(0), NUM_ITEMS, progress=0.5)
  assert 0.0 <= float(parts["domain_adversarial/domain_accuracy"]) <= 1.0
  assert float(parts["domain_adversarial/lambda"]) == pytest.approx(float(objectives.ganin_lambda(0.5)))
  # the encoder's gradient through the domain loss is reversed: it pushes the other way
  def domain_only(p, lam_scale):
    c = cfg.objective.domain_adversarial.copy_and_resolve_references()
    c.lambda_max = lam_scale
    ctx = objectives.TermContext(module, p, batches, jax.random.key(0), NUM_ITEMS, c, None, 1.0)
    return objectives.domain_adversarial(ctx)[0]
  g_pos = common.flatten(jax.grad(domain_only)(params, 1.0))
  g_neg = common.flatten(jax.grad(domain_only)(params, -1.0))
  block = "block_0/conv_0/kernel"
  np.testing.assert_allclose(g_pos[block], -g_neg[block], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(g_pos["heads/domain_discriminator/out/kernel"],
                             g_neg["heads/domain_discriminator/out/kernel"], rtol=1e-5)  # the head is not reversed


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_shared_private_starts_as_the_pretrained_model_and_separates_the_parts(name):
  encoder, module, plan = bound(name, "shared_private")
  pretrained = perturbed(init(encoder, seed=1))
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  flat = common.flatten(params)
  for part in ("private/target_encoder/", "private/source_encoder/", "private/target_gate/", "heads/domain_discriminator/"):
    assert any(p.startswith(part) for p in flat), part
  lrs = schedules.resolve(params, plan.schedule)
  assert lrs["private/source_gate/kernel"] == lrs["heads/domain_discriminator/out/kernel"] == 1.0
  want = encoder.apply({"params": pretrained}, INPUTS, method="score_last")
  for domain in ("target", "source"):  # zero-init gates: both domains start as the pretrained model
    got = module.apply({"params": params}, INPUTS, domain, method="score_last")
    np.testing.assert_allclose(got[:, 1:NUM_ITEMS + 1], want[:, 1:NUM_ITEMS + 1], rtol=1e-5, atol=1e-5)
  cfg = base_config()
  objective = objectives.assemble(cfg.objective, True, ("target", "source"), name, plan.strategy.terms)
  assert objective.names == ["full_softmax", "source_full_softmax", "domain_adversarial", "orthogonality"]
  batches = {"target": _batches(0)["target"], "source": _batches(1)["target"]}
  ctx = lambda p, term: objectives.TermContext(module, p, batches, jax.random.key(0), NUM_ITEMS,  # noqa: E731
                                               cfg.objective.get(term), None, 1.0)
  # the discriminator reads the shared states only: no private param gets its gradient
  g_domain = common.flatten(jax.grad(lambda p: objectives.domain_adversarial(ctx(p, "domain_adversarial"))[0])(params))
  assert all(float(jnp.abs(v).sum()) == 0 for p, v in g_domain.items() if p.startswith("private/"))
  assert any(float(jnp.abs(v).sum()) > 0 for p, v in g_domain.items() if not p.startswith(("private/", "heads/")))
  # orthogonality: the hand formula on both streams, and it trains the private encoders
  value, _ = objectives.orthogonality(ctx(params, "orthogonality"))
  def by_hand(stream):
    s, p = module.apply({"params": params}, batches[stream]["inputs"], False, stream,
                        rngs={"dropout": jax.random.fold_in(jax.random.key(0), ("target", "source").index(stream))},
                        method="shared_private")
    unit = lambda x: (lambda c: c / np.linalg.norm(c, axis=1, keepdims=True))(np.asarray(x[:, -1]) - np.asarray(x[:, -1]).mean(0))  # noqa: E731
    return np.mean((unit(s).T @ unit(p)) ** 2)
  assert float(value) == pytest.approx((by_hand("target") + by_hand("source")) / 2, rel=1e-4)
  g_orth = common.flatten(jax.grad(lambda p: objectives.orthogonality(ctx(p, "orthogonality"))[0])(params))
  assert any(float(jnp.abs(v).sum()) > 0 for p, v in g_orth.items() if p.startswith("private/source_encoder/"))
  plain, plain_module, _ = bound(name, "dann")
  with pytest.raises(ValueError, match=r"'orthogonality' needs a shared-private model"):
    objectives.orthogonality(objectives.TermContext(plain_module, init(plain_module), batches, jax.random.key(0),
                                                    NUM_ITEMS, None))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec"])
def test_adversarial_examples_increase_the_loss_within_the_radius(name):
  module = build(name)
  params = perturbed(init(module))
  cfg = base_config().objective
  batches = _batches()
  clean = objectives.TermContext(module, params, batches, jax.random.key(0), NUM_ITEMS, cfg.adversarial_examples)
  base_loss = float(objectives.TERMS["full_softmax"].fn(clean)[0])
  for steps, perturb in ((1, ("items", "sequence")), (3, ("items", "sequence")), (1, ("items",)), (2, ("sequence",))):
    c = cfg.adversarial_examples.copy_and_resolve_references()
    c.steps, c.perturb = steps, perturb
    ctx = objectives.TermContext(module, params, batches, jax.random.key(0), NUM_ITEMS, c)
    loss, _, extra = objectives.adversarial_examples(ctx)
    assert float(loss) > base_loss  # the perturbation makes this batch harder
    names = {"items": "perturbation_norm", "sequence": "sequence_perturbation_norm"}
    assert set(extra) == {names[k] for k in perturb}
    assert all(0 < float(v) <= c.epsilon + 1e-6 for v in extra.values())
  c.perturb = ("tokens",)
  with pytest.raises(ValueError, match=r"perturb=\('tokens',\): a non-empty subset of \['items', 'sequence'\]"):
    cfg2 = base_config()
    cfg2.objective.adversarial_examples.perturb = ("tokens",)
    objectives.assemble(cfg2.objective, True)


# --- distillation --------------------------------------------------------------------------------

def _teacher(module, params, vocab):
  return objectives.Teacher(module, params, jnp.arange(vocab))


def test_one_hot_teacher_at_temperature_1_gives_the_cross_entropy():
  """A teacher whose scores are one-hot on the next item: distill_logits == full_softmax."""
  student = build("sasrec")
  params = perturbed(init(student))
  batches = _batches()
  targets = batches["target"]["targets"]

  class OneHot:  # a "model" scoring the true next item 1e4 above the rest
    def apply(self, variables, inputs, deterministic=True):
      hidden = jax.nn.one_hot(targets, student.vocab_size) * 1e4
      return hidden, jnp.eye(student.vocab_size), jnp.zeros(student.vocab_size)

  cfg = base_config().objective
  c = cfg.distill_logits.copy_and_resolve_references()
  c.temperature = 1.0
  ctx = objectives.TermContext(student, params, batches, jax.random.key(0), NUM_ITEMS, c,
                               teacher=objectives.Teacher(OneHot(), None, jnp.arange(student.vocab_size)))
  distilled, n = objectives.distill_logits(ctx)
  ce, m = objectives.TERMS["full_softmax"].fn(ctx)
  assert float(distilled) == pytest.approx(float(ce), rel=1e-4) and int(n) == int(m)


def test_ranking_distillation_rewards_the_teachers_top_items():
  student = build("gru4rec")
  params = init(student)
  teacher_module = build("sasrec")
  teacher = _teacher(teacher_module, perturbed(init(teacher_module), seed=3), student.vocab_size)
  ctx = objectives.TermContext(student, params, _batches(), jax.random.key(0), NUM_ITEMS,
                               base_config().objective.distill_ranking, teacher=teacher)
  loss, _ = objectives.distill_ranking(ctx)
  grads = jax.grad(lambda p: objectives.distill_ranking(
      objectives.TermContext(student, p, _batches(), jax.random.key(0), NUM_ITEMS,
                             base_config().objective.distill_ranking, teacher=teacher))[0])(params)
  assert np.isfinite(float(loss)) and float(jnp.abs(grads["output_bias"]).sum()) > 0


def test_a_teacher_on_another_numbering_reads_and_scores_the_students_items_by_key():
  """A teacher trained on another domain numbers the items its own way and may lack some of the
  target's: it reads the student's inputs in its ids (an unknown item is a blank) and distillation
  covers only the items it knows (the next-item terms train the rest)."""
  student = build("gru4rec")
  params = init(student)
  teacher_module = build("sasrec")
  teacher_params = perturbed(init(teacher_module), seed=3)
  known = 25  # student items 26..30 are unknown to the teacher; the rest sit at reversed ids
  id_map = np.zeros(student.vocab_size, np.int32)
  id_map[1:known + 1] = np.arange(known, 0, -1)
  teacher = objectives.Teacher(teacher_module, teacher_params, jnp.asarray(id_map))
  got = teacher.logits(INPUTS)
  hidden, table, bias = teacher_module.apply({"params": teacher_params}, jnp.asarray(id_map)[INPUTS])
  want = common.score_items(hidden, table, bias)
  np.testing.assert_allclose(got[..., 1:known + 1], want[..., id_map[1:known + 1]], rtol=1e-6, atol=1e-6)
  unmapped, _, _ = teacher_module.apply({"params": teacher_params}, INPUTS)
  assert not np.allclose(hidden, unmapped, atol=1e-4)  # reading the student's ids as its own would differ
  assert list(np.asarray(teacher.known)[:NUM_ITEMS + 1]) == [False] + [True] * known + [False] * (NUM_ITEMS - known)
  for term in ("distill_logits", "distill_ranking"):
    grads = jax.grad(lambda p, term=term: getattr(objectives, term)(objectives.TermContext(
        student, p, _batches(), jax.random.key(0), NUM_ITEMS, base_config().objective[term], teacher=teacher))[0])(params)
    bias_grad = np.asarray(grads["output_bias"])
    assert np.all(bias_grad[known + 1:NUM_ITEMS + 1] == 0) and np.abs(bias_grad[1:known + 1]).sum() > 0, term
  # a teacher that knows fewer items than distill_ranking.top_k (10): its top-K is what it knows
  few = np.zeros(student.vocab_size, np.int32)
  few[1:4] = [3, 2, 1]
  ctx = objectives.TermContext(student, params, _batches(), jax.random.key(0), NUM_ITEMS,
                               base_config().objective.distill_ranking,
                               teacher=objectives.Teacher(teacher_module, teacher_params, jnp.asarray(few)))
  loss, _ = objectives.distill_ranking(ctx)
  assert np.isfinite(float(loss)) and 0 < float(loss) < 100


def test_hidden_state_matching_counts_only_positions_the_teacher_reads_as_items():
  """distill_hidden regresses the teacher's hidden states where the teacher reads an item: at a
  padding slot or an item the teacher does not know (a blank to it) its state says nothing about
  that input, so those positions carry no weight (checked against a hand computation, which a loss
  over every non-padding position would miss)."""
  teacher_module = build("sasrec")
  teacher_params = perturbed(init(teacher_module), seed=3)
  known = 20  # student items 21..30 are unknown to the teacher
  id_map = np.zeros(teacher_module.vocab_size, np.int32)
  id_map[1:known + 1] = np.arange(1, known + 1)
  teacher = objectives.Teacher(teacher_module, teacher_params, jnp.asarray(id_map))
  batches = _batches()
  inputs = np.asarray(batches["target"]["inputs"])
  student_hidden = jax.random.normal(jax.random.key(7), inputs.shape + (EMBED,))

  class Student:  # hidden states fixed per position, the projection head the identity
    def apply(self, variables, x, deterministic=True, rngs=None, method=None):
      if method == "project":
        return x
      return student_hidden, None, None

  ctx = objectives.TermContext(Student(), {}, batches, jax.random.key(0), NUM_ITEMS, None, teacher=teacher)
  loss, n = objectives.distill_hidden(ctx)
  teacher_hidden = np.asarray(teacher_module.apply({"params": teacher_params}, id_map[inputs], method="encode"))
  per_position = ((np.asarray(student_hidden) - teacher_hidden) ** 2).mean(-1)
  reads_an_item = (inputs > 0) & (inputs <= known)
  assert 0 < reads_an_item.sum() < (inputs > 0).sum()  # the batch has both kinds of non-padding input
  assert int(n) == int(reads_an_item.sum())
  assert float(loss) == pytest.approx(float(per_position[reads_an_item].mean()), rel=1e-5)
  assert float(loss) != pytest.approx(float(per_position[inputs > 0].mean()), rel=1e-3)


# --- multi-domain joint training ----------------------------------------------------------------

@pytest.mark.parametrize("name,kind", [("sasrec", "shared_bottom"), ("sasrec", "star"), ("gru4rec", "shared_bottom")])
def test_multi_domain_starts_as_the_shared_model_and_domains_then_differ(name, kind):
  encoder, module, plan = bound(name, "multi_domain", **{"multi_domain.kind": kind})
  pretrained = perturbed(init(encoder, seed=1))
  params, _ = plan.init_params(init(module, seed=2), pretrained, KEYS, KEYS)
  flat = common.flatten(params)
  assert any(p.startswith("domains/target_head/") for p in flat) and any(p.startswith("domains/source_head/") for p in flat)
  want = encoder.apply({"params": pretrained}, INPUTS, method="score_last")
  for domain in ("target", "source"):  # zero-init parts: both domains start as the shared model
    got = module.apply({"params": params}, INPUTS, domain, method="score_last")
    np.testing.assert_allclose(got[:, 1:NUM_ITEMS + 1], want[:, 1:NUM_ITEMS + 1], rtol=1e-6, atol=1e-6)
  nudged = common.unflatten({p: v + 0.3 if p.startswith("domains/source") else v for p, v in flat.items()})
  t = module.apply({"params": nudged}, INPUTS, "target", method="score_last")
  s = module.apply({"params": nudged}, INPUTS, "source", method="score_last")
  np.testing.assert_allclose(t[:, 1:NUM_ITEMS + 1], want[:, 1:NUM_ITEMS + 1], rtol=1e-6, atol=1e-6)
  assert not np.allclose(s, t)  # the source's own parts only change the source
  if kind == "star":  # the auxiliary domain-indicator tower: zero at init, then a term per domain
    assert {"domains/aux_tower/indicator", "domains/aux_tower/out/kernel"} <= set(flat)
    tower = common.unflatten({p: v + 0.3 if p == "domains/aux_tower/out/kernel" else v for p, v in flat.items()})
    t2 = module.apply({"params": tower}, INPUTS, "target", method="score_last")
    s2 = module.apply({"params": tower}, INPUTS, "source", method="score_last")
    assert not np.allclose(t2[:, 1:NUM_ITEMS + 1], want[:, 1:NUM_ITEMS + 1], atol=1e-4)
    assert not np.allclose(t2 - t, s2 - s, atol=1e-4)  # a different term for each domain


def test_star_needs_projections():
  with pytest.raises(ValueError, match=r"kind='star' needs dense projections.*GRU4Rec has none"):
    bound("gru4rec", "multi_domain", **{"multi_domain.kind": "star"})


def test_output_bias_must_be_a_bool():
  cfg = ml_collections.ConfigDict({"output_bias": "no"})
  with pytest.raises(ValueError, match=r"model.output_bias='no' must be True or False"):
    models._flag(cfg, "output_bias", True)
  assert models._flag(ml_collections.ConfigDict({}), "output_bias", True) is True
