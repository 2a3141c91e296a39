"""A text tower that trains (model.text.tune, issue 30): at step 0 it is the pretrained sentence
encoder exactly, training moves only its own params (full deltas or LoRA), the cached token states
and base weights stay the catalogue's data, the presets treat it as part of the item side, and a
pretrained model whose text was frozen transfers into a tuned tower."""

import os
import re
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import jitted  # noqa: E402
from test_text_items import _text_config, encoder_dir  # noqa: E402,F401  (the tiny BERT folder fixture)

from xrec import models  # noqa: E402
from xrec.data import pipeline  # noqa: E402
from xrec.models import common  # noqa: E402
from xrec.models import text_encoder as te  # noqa: E402
from xrec.models import text_tower as tt  # noqa: E402
from xrec.train import checkpoint as ckpt  # noqa: E402
from xrec.train import item_text  # noqa: E402
from xrec.train.hooks.item_text import set_item_text  # noqa: E402
from xrec.train.loop import train_and_evaluate  # noqa: E402
from xrec.transfer import strategies  # noqa: E402

TEXTS = ["bada kefi", "the matrix (1999) action|sci-fi", "hello world", "zuvo", "lomi nera sato bufe gido",
         "cafe"]


def _tower(encoder, mode: str, layers: int, texts=TEXTS, rank: int = 4):
  """(module, params, inputs) of a tower over `texts`, rows laid out as the trainer does (padding
  row 0 first, sorted by token count, length buckets); inputs = (states, mask, rank, base)."""
  total = encoder.config.num_hidden_layers
  data, extra = item_text.tower_rows(*encoder.token_states(texts, total - layers))
  spec = tt.TowerSpec(mode, layers, rank, data["states"].shape[1], encoder.tower_arch(), extra["buckets"]).checked()
  inputs = (data["states"], data["mask"], data["rank"], jax.tree.map(jnp.asarray, encoder.layer_weights(total - layers)))
  module = tt.TextTower(spec)
  params = nn.unbox(jitted(module.init)(jax.random.PRNGKey(0), *inputs)["params"])  # one program, not hundreds
  return module, params, inputs


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_a_tower_at_step_zero_is_the_pretrained_encoder_and_its_params_move_it(encoder_dir, mode):
  encoder = te.load(encoder_dir)
  want = encoder.embed(TEXTS)
  for layers in (1, encoder.config.num_hidden_layers):  # the top layer; every layer (only embeddings cached)
    module, params, inputs = _tower(encoder, mode, layers)
    assert len(module.spec.buckets) > 1  # the texts' lengths differ: several widths, and it still matches
    _, extra = item_text.tower_rows(*te.load(encoder_dir).token_states(TEXTS, 1))
    assert extra["token_slots"]["bucketed"] < extra["token_slots"]["padded"]
    apply = jitted(module.apply)
    got = np.asarray(apply({"params": params}, *inputs))
    assert not got[0].any()  # padding
    np.testing.assert_allclose(got[1:], want, atol=2e-5)
    # the trainable part is live: a step on it changes every item's vector
    moved = jax.tree.map(lambda p: p + 0.05 * np.random.default_rng(1).normal(size=p.shape), params)
    assert np.abs(np.asarray(apply({"params": moved}, *inputs))[1:] - want).max(-1).min() > 1e-4
  full = sum(p.size for p in jax.tree.leaves(_tower(encoder, "full", 1)[1]))
  lora = sum(p.size for p in jax.tree.leaves(_tower(encoder, "lora", 1)[1]))
  h, i = encoder.config.hidden_size, encoder.config.intermediate_size
  assert full == 4 * (h * h + h) + 2 * h * i + h + i + 4 * h  # every weight of the layer
  assert lora == 2 * (h * 4 + 4 * h)  # A and B of query and value, rank 4
  # a text longer than the token slots keeps its first pieces between [CLS] and [SEP]
  states, m = encoder.token_states(TEXTS, 1, tokens=4)
  assert states.shape[1] == 4 and m.sum(1).max() == 4
  with pytest.raises(ValueError, match="leaves no room"):
    encoder.token_states(TEXTS, 1, tokens=2)


def test_padding_rows_get_finite_gradients(encoder_dir):
  """Rows without text (padding, sharding rows) pool to zero; the normalisation's gradient stays finite."""
  encoder = te.load(encoder_dir)
  module, params, (states, mask, rank, base) = _tower(encoder, "full", 1)
  # three more rows past the buckets (sharding padding: width 1, no token), read through rank
  states = np.concatenate([states, np.zeros((3,) + states.shape[1:], np.float32)])
  mask = np.concatenate([mask, np.zeros((3, mask.shape[1]), np.float32)])
  rank = np.concatenate([rank, np.arange(7, 10, dtype=np.float32)])
  out = jitted(module.apply)({"params": params}, states, mask, rank, base)
  assert out.shape == (10, encoder.dim) and not np.asarray(out)[7:].any()
  assert tt.length_buckets([0, 3, 3, 5, 9, 9, 9, 12], 12) == ((4, 5), (7, 9), (8, 12))
  assert tt.length_buckets([0, 4, 4, 4], 8) == ((4, 4),)  # equal widths merge
  grads = jitted(jax.grad(lambda p: jnp.sum(module.apply({"params": p}, states, mask, rank, base) ** 2
                                            * np.arange(10)[:, None])))(params)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))
  assert max(float(np.abs(g).max()) for g in jax.tree.leaves(grads)) > 0


def test_the_presets_train_the_tower_with_the_item_side_and_never_the_cached_data():
  c = _text_config("/tmp", "unused").model
  c.text.update(dict(dim=8, tune="lora"))
  roles = models.build(c, 10).roles()
  assert roles.item_tower == "item_embed/tower" and roles.item_text == "item_embed/text"

  def trains(name, path):
    s = strategies.get_strategy(name, _transfer_options(), roles)
    return next(m for rx, m in s.schedule if re.fullmatch(rx, path)) is not None

  assert trains("adaptor_only", "item_embed/tower/layer_0_query_lora_b")
  assert trains("frozen_encoder", "item_embed/tower/layer_0_query_lora_b")
  assert not trains("frozen_encoder", "block_0/attn/query/kernel")
  assert not trains("adaptor_only", "block_0/attn/query/kernel")
  c.item_repr = "id"
  with pytest.raises(ValueError, match="model.item_repr='id' has none"):
    models.build(c, 10)
  c.item_repr, c.text.tune = "text", "prefix"
  with pytest.raises(ValueError, match=r"model.text.tune='prefix' is not valid; valid: \['', 'full', 'lora'\]"):
    models.build(c, 10)
  c.text.tune, c.text.lora_rank = "lora", 0
  with pytest.raises(ValueError, match="model.text.lora_rank=0 must be a positive integer"):
    models.build(c, 10)
  c.text.lora_rank, c.text.tune_layers = 8, 0
  with pytest.raises(ValueError, match="model.text.tune_layers=0 must be a positive integer"):
    models.build(c, 10)


def _transfer_options():
  from xrec.defaults import base_config
  return base_config().transfer


def test_tuned_towers_train_end_to_end_and_transfer_from_a_frozen_text_model(data_dir, encoder_dir, tmp_path):
  results, params = {}, {}
  for mode in ("full", "lora"):
    c = _text_config(data_dir, encoder_dir)
    c.model.text.tune = mode
    results[mode] = train_and_evaluate(c, str(tmp_path / mode))
    params[mode], _ = ckpt.restore_best_params(str(tmp_path / mode))
  info = results["lora"]["model"]["item_text"]
  assert info["tune"] == "lora" and info["tuned_layers"] == 1 and info["frozen_layers"] == 1 and info["tokens"] >= 3
  # what trains moved off zero; the cached states and base weights are the catalogue's, untouched
  assert float(np.abs(params["lora"]["item_embed"]["tower"]["layer_0_query_lora_b"]).max()) > 0
  assert float(np.abs(params["full"]["item_embed"]["tower"]["layer_0"]["mlp_in"]["kernel"]).max()) > 0
  domain = pipeline.load_domain(c.data)
  data, _ = item_text.item_text_tower(c.data, domain, encoder_dir, 1, progress=False)
  text = params["lora"]["item_embed"]["text"]
  assert np.array_equal(np.asarray(text["states"])[:201], data["states"])
  assert np.array_equal(np.asarray(text["rank"])[:201], data["rank"]) and not np.asarray(text["rank"])[201:].any()
  assert info["token_slots"]["bucketed"] <= info["token_slots"]["padded"]  # (synthetic texts: one length)
  assert np.array_equal(np.asarray(text["base"]["layer_0"]["query"]["kernel"]),
                        np.asarray(data["base"]["layer_0"]["query"]["kernel"]))
  assert results["lora"]["transfer"]["trainable"] < results["full"]["transfer"]["trainable"]
  # a source whose text tower was frozen: the target's tower starts as the pretrained encoder
  frozen = _text_config(data_dir, encoder_dir)
  train_and_evaluate(frozen, str(tmp_path / "frozen_source"))
  t = _text_config(data_dir, encoder_dir)
  t.data.domain, t.train.init_from, t.transfer.strategy = "target", str(tmp_path / "frozen_source"), "adaptor_only"
  t.model.text.tune = "lora"
  tuned = train_and_evaluate(t, str(tmp_path / "tuned_target"))
  assert np.isfinite(tuned["test"]["ndcg@10"]) and tuned["transfer"]["trainable"] < tuned["transfer"]["total"]
  source, _ = ckpt.restore_best_params(str(tmp_path / "frozen_source"))
  target, _ = ckpt.restore_best_params(str(tmp_path / "tuned_target"))
  for part in ("kernel", "gate"):  # the adaptor came from the source and trained on
    assert target["item_embed"]["adaptor"][part].shape == source["item_embed"]["adaptor"][part].shape
  assert np.array_equal(target["block_0"]["attn"]["query"]["kernel"], source["block_0"]["attn"]["query"]["kernel"])
  assert float(np.abs(target["item_embed"]["tower"]["layer_0_value_lora_b"]).max()) > 0


def test_a_static_encoder_or_too_many_layers_is_refused_by_name(data_dir, encoder_dir):
  c = _text_config(data_dir, encoder_dir)
  domain = pipeline.load_domain(c.data)
  with pytest.raises(ValueError, match=r"model.text.tune_layers=3 must be in \[1, 2\]"):
    item_text.item_text_tower(c.data, domain, encoder_dir, 3, progress=False)

  class Static:
    name = "wordllama-l2-supercat-256"

  with pytest.raises(ValueError, match="static token-embedding model"):
    item_text.item_text_tower(c.data, domain, Static(), 1, progress=False)
  # the frozen path still takes its table (set_item_text: one array at the role)
  roles = models.build(_frozen_model(), 10).roles()
  params = {"item_embed": {"table": np.zeros((16, 8), np.float32)}}
  out = set_item_text(params, roles, {"": np.ones((11, 8))})
  assert out["item_embed"]["table"][:11].all() and not out["item_embed"]["table"][11:].any()
  with pytest.raises(ValueError, match="does not fit"):
    set_item_text(params, roles, {"": np.ones((11, 4))})


def _frozen_model(tune: str = ""):
  c = _text_config("/tmp", "unused").model
  c.text.update(dict(dim=8, tune=tune))
  return c


def test_common_text_items_use_the_tower_for_inputs_and_the_output_table(encoder_dir):
  """TextItems with a tower: the rows of `ids` are the adapted tower output's rows."""
  encoder = te.load(encoder_dir)
  data, extra = item_text.tower_rows(*encoder.token_states(TEXTS, 1))
  spec = tt.TowerSpec("lora", 1, 2, data["states"].shape[1], encoder.tower_arch(), extra["buckets"])
  items = common.TextItems(vocab_size=8, text_dim=encoder.dim, embed_dim=4, experts=2, tower_spec=spec)
  ids = jnp.asarray([[1, 2, 0], [6, 6, 3]])
  params = nn.unbox(jitted(items.init)(jax.random.PRNGKey(0), ids)["params"])
  params["text"] = set_item_text({"item_embed": params}, models.build(_frozen_model(tune="lora"), 10).roles(),
                                 {**data, "base": encoder.layer_weights(1)})["item_embed"]["text"]
  rows = jitted(items.apply)({"params": params}, ids)
  table = jitted(items.apply, method=lambda m: m.embedding)({"params": params})
  np.testing.assert_allclose(rows, np.asarray(table)[np.asarray(ids)], atol=1e-6)
  vectors = np.asarray(jitted(items.apply, method=lambda m: m.text_vectors())({"params": params}))
  np.testing.assert_allclose(vectors[1:7], encoder.embed(TEXTS), atol=2e-5)


def test_stage_hashes_ignore_the_tower_fields_at_their_defaults():
  """Stages computed before model.text.tune existed keep their hashes (the literal hashes were
  computed at commit 75b1cf2, before the tower fields); a tuned tower is another stage."""
  from conftest import tiny_config
  from xrec.train import experiment
  c = tiny_config("/tmp/unused")
  c.eval.batch_size, c.train.checkpoint_every_steps = 32, 4  # tiny_config's values at 75b1cf2
  assert experiment.stage_hash(c) == "b99d24689e886e58"
  c.model.item_repr, c.model.text.encoder, c.model.text.experts = "text", "minilm", 2
  assert experiment.stage_hash(c) == "013b5f077b3d99da"
  c.model.text.tune = "lora"
  assert experiment.stage_hash(c) != "013b5f077b3d99da"


@pytest.mark.parametrize("config, rows, tuned_layers", [("config.py", 9, {1, 6}), ("cpu.py", 7, {1})])
def test_the_tower_study_shares_one_frozen_text_pretraining_and_varies_only_the_target(monkeypatch, config, rows,
                                                                                       tuned_layers):
  """config.py (an accelerator's: LoRA on 6 layers, the top one or all 6 in full) and cpu.py (LoRA and
  full tuning of the same top layer): every tower transfers the same frozen-text pretraining."""
  from xrec.config import with_overrides
  from xrec.data import fingerprint
  from xrec.train import experiment
  from xrec.train.runner import load_config_module
  monkeypatch.setattr(fingerprint, "digests", lambda data: {})  # no real files in tests
  study = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                                          "text_tower", config))
  base = study.get_config()
  cells = [c for c in study.sweep() if c["seed"] == 0 and c["data.user_fraction"] == 0.05]
  assert len(cells) == rows and {c.get("model.text.tune", "") for c in cells} == {"", "lora", "full"}
  assert {c["model.text.tune_layers"] for c in cells if "model.text.tune_layers" in c} == tuned_layers
  pretrain, transfer = set(), set()
  for cell in cells:
    cfg = with_overrides(base, cell)
    if cell["transfer.strategy"] != "scratch":
      p = experiment.pretrain_config(cfg)
      assert p.model.item_repr == "text" and p.model.text.tune == ""
      pretrain.add(experiment.stage_hash(p))
    transfer.add(experiment.stage_hash(experiment.transfer_config(cfg, cell["transfer.strategy"], "/tmp/p")))
  assert len(pretrain) == 1 and len(transfer) == rows
  # the real-data text study pretrains the same model, so the queue starts this study from its stage
  text = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments",
                                         "real_data", "text.py"))
  text_base = text.get_config("ml1m_cross_genre,cpu,one_pretraining")
  zero_shot = next(c for c in text.sweep() if c["transfer.strategy"] == "zero_shot")
  if config == "cpu.py":
    assert pretrain == {experiment.stage_hash(experiment.pretrain_config(with_overrides(text_base, zero_shot)))}


@pytest.mark.parametrize("name,repr_", [("sasrec", "text"), ("bert4rec", "text"), ("gru4rec", "text+id")])
def test_a_step_runs_the_tower_once_and_every_text_encoder_takes_it(encoder_dir, name, repr_, monkeypatch):
  """The inputs' rows and the scores read one tower pass (a training call and score_last); the
  BERT4Rec mask token keeps its own row; text + ID adds the ID rows."""
  encoder = te.load(encoder_dir)
  data, extra = item_text.tower_rows(*encoder.token_states(TEXTS, 1))
  c = _frozen_model(tune="full")
  c.name, c.item_repr = name, repr_
  c.text.update(dict(dim=encoder.dim, tokens=int(data["states"].shape[1]), arch=encoder.tower_arch(),
                     buckets=extra["buckets"]))
  model = models.build(c, len(TEXTS))
  inputs = jnp.asarray([[0, 0, 1, 2, 3, 4, 5, 6, 2, 1, 3, 4, 5, 6, 1, 2, 3, 4, 5, 6]])
  params = nn.unbox(model.init(jax.random.PRNGKey(0), inputs)["params"])
  params = set_item_text(params, model.roles(), {**data, "base": encoder.layer_weights(1)})
  calls = []
  original = tt.TextTower.__call__
  monkeypatch.setattr(tt.TextTower, "__call__", lambda self, *a: calls.append(1) or original(self, *a))
  hidden, table, _ = model.apply({"params": params}, inputs)
  assert len(calls) == 1
  scores = model.apply({"params": params}, inputs, method="score_last")
  assert len(calls) == 2 and np.isfinite(np.asarray(scores)).all()
  # the shared table gives the inputs the rows the tower-computing path gives them
  monkeypatch.setattr(tt.TextTower, "__call__", original)
  rows = model.apply({"params": params}, inputs, method=lambda m, x: m.item_embed(x))
  np.testing.assert_allclose(np.asarray(table)[np.asarray(inputs)], rows, atol=1e-6)
  if model.uses_mask_token:
    mask_row = np.asarray(table)[len(TEXTS) + 1]
    assert np.abs(mask_row - np.asarray(params["item_embed"]["mask_embed"])).max() < 1e-6


def test_a_bfloat16_tower_computes_in_bfloat16_close_to_float32(encoder_dir):
  encoder = te.load(encoder_dir)
  module, params, inputs = _tower(encoder, "lora", 2)
  fp32 = np.asarray(jitted(module.apply)({"params": params}, *inputs))
  half = jitted(tt.TextTower(module.spec, dtype=jnp.bfloat16).apply)({"params": params}, *inputs)
  assert half.dtype == jnp.bfloat16
  assert np.abs(np.asarray(half, np.float32) - fp32).max() < 0.05


def test_a_tuned_source_refuses_a_frozen_target_naming_the_tower(data_dir, encoder_dir, tmp_path):
  """A tower trained on the source cannot be dropped silently: the load names its params."""
  c = _text_config(data_dir, encoder_dir)
  c.model.text.tune = "lora"
  train_and_evaluate(c, str(tmp_path / "tuned_source"))
  t = _text_config(data_dir, encoder_dir)
  t.data.domain, t.train.init_from, t.transfer.strategy = "target", str(tmp_path / "tuned_source"), "full_finetune"
  with pytest.raises(ValueError, match=r"(?s)does not fit the model.*\+ item_embed/tower/layer_0_query_lora_a"):
    train_and_evaluate(t, str(tmp_path / "frozen_target"))
  t.model.text.tune, t.transfer.strategy = "lora", "zero_shot"  # tuned -> tuned: the tower loads as trained
  r = train_and_evaluate(t, str(tmp_path / "tuned_target"))
  assert np.isfinite(r["test"]["ndcg@10"])
  src, _ = ckpt.restore_best_params(str(tmp_path / "tuned_source"))
  dst, _ = ckpt.restore_best_params(str(tmp_path / "tuned_target"))
  assert float(np.abs(src["item_embed"]["tower"]["layer_0_query_lora_b"]).max()) > 0
  for name in ("layer_0_query_lora_a", "layer_0_query_lora_b", "layer_0_value_lora_b"):
    assert np.array_equal(dst["item_embed"]["tower"][name], src["item_embed"]["tower"][name])
  # while the text data are the target catalogue's own, never the source's
  assert not np.array_equal(dst["item_embed"]["text"]["states"], src["item_embed"]["text"]["states"])
