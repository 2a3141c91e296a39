"""Items represented by their text (model.item_repr text / text+id, issue 14): the adaptor's step-0
behaviour, the text table frozen and set from the current catalogue, zero-shot on a disjoint
catalogue, and scoring items never seen in training."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import jitted, tiny_config  # noqa: E402
import test_text_encoder as T  # noqa: E402

from xrec import models  # noqa: E402
from xrec.models import common  # noqa: E402
from xrec.train import checkpoint as ckpt  # noqa: E402
from xrec.train import item_text  # noqa: E402
from xrec.train.loop import train_and_evaluate  # noqa: E402
from xrec.data import pipeline  # noqa: E402


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("text_encoder")
  from xrec.models import text_encoder as te
  te.write_safetensors(str(path / "model.safetensors"), T._hf_tensors(np.random.default_rng(0)))
  (path / "config.json").write_text(json.dumps(T.CONFIG))
  # the synthetic words split into these pieces (stems and suffixes are two syllables of 2 letters)
  syllables = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]
  vocab = T.VOCAB + ["-"] + syllables + ["##" + s for s in syllables]
  (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
  config = json.loads((path / "config.json").read_text())
  config["vocab_size"] = len(dict.fromkeys(vocab))
  (path / "config.json").write_text(json.dumps(config))
  tensors = T._hf_tensors(np.random.default_rng(0))
  tensors["embeddings.word_embeddings.weight"] = np.random.default_rng(1).normal(
      size=(config["vocab_size"], T.CONFIG["hidden_size"])).astype(np.float32)
  te.write_safetensors(str(path / "model.safetensors"), tensors)
  return str(path)


def _text_config(data_dir, encoder_dir, repr_="text"):
  c = tiny_config(data_dir)
  c.data.synthetic.update(dict(scenario="cross_app", item_overlap=0.0))  # disjoint catalogues
  c.model.item_repr = repr_
  c.model.text.encoder = encoder_dir
  c.model.text.experts = 2
  return c


def test_the_adaptor_starts_as_the_mean_of_its_experts_and_the_shapes_follow_the_config():
  adaptor = common.MoEAdaptor(embed_dim=4, experts=3)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(5, 6)), jnp.float32)
  import flax.linen as nn
  params = nn.unbox(adaptor.init(jax.random.PRNGKey(0), x)["params"])
  assert params["bias"].shape == (3, 6) and params["kernel"].shape == (3, 6, 4) and params["gate"].shape == (6, 3)
  params = {**params, "bias": jnp.asarray(np.random.default_rng(1).normal(size=(3, 6)), jnp.float32)}
  want = np.mean([(np.asarray(x) - np.asarray(params["bias"][k])) @ np.asarray(params["kernel"][k])
                  for k in range(3)], axis=0)  # zero gate: every expert weighs 1/3
  assert np.allclose(adaptor.apply({"params": params}, x), want, atol=1e-5)
  c = tiny_config("/tmp").model
  c.item_repr, c.text.dim = "text", 0
  with pytest.raises(ValueError, match="needs model.text.dim"):
    models.build(c, 10)
  c.text.dim, c.tie_embeddings = 8, False
  with pytest.raises(ValueError, match="needs model.tie_embeddings=True"):
    models.build(c, 10)
  c.tie_embeddings, c.item_repr = True, "words"
  with pytest.raises(ValueError, match=r"model.item_repr='words' is not valid; valid: \['id', 'text', 'text\+id'\]"):
    models.build(c, 10)
  c.item_repr, c.name = "text", "popularity"
  with pytest.raises(ValueError, match="not supported by Popularity"):
    models.build(c, 10)
  c.text.dim = 0  # checked before any text is embedded, without the width
  with pytest.raises(ValueError, match="not supported by Popularity"):
    models.check_item_repr(c)
  c.name, c.text.experts = "sasrec", 0
  with pytest.raises(ValueError, match="model.text.experts=0 must be >= 1"):
    models.check_item_repr(c)


def test_text_only_pretraining_transfers_to_a_disjoint_catalogue_zero_shot_and_fine_tuned(data_dir, encoder_dir,
                                                                                          tmp_path):
  c = _text_config(data_dir, encoder_dir)
  source = train_and_evaluate(c, str(tmp_path / "source"))
  assert source["model"]["item_repr"] == "text" and source["model"]["item_text"]["items"] == 200
  # the text table holds the catalogue's text embeddings, frozen: bit-identical after training
  params, _ = ckpt.restore_best_params(str(tmp_path / "source"))
  domain = pipeline.load_domain(c.data)
  table, _ = item_text.item_text_table(c.data, domain, c.model.text.encoder, progress=False)
  assert np.array_equal(np.asarray(params["item_embed"]["table"])[:201], table)
  assert source["transfer"]["trainable"] < source["transfer"]["total"]
  assert float(np.abs(np.asarray(params["item_embed"]["adaptor"]["gate"])).max()) > 0  # the adaptor trained
  # zero-shot on a target that shares no item with the source: a real number, not n/a
  t = _text_config(data_dir, encoder_dir)
  t.data.domain = "target"
  t.train.init_from = str(tmp_path / "source")
  t.transfer.strategy = "zero_shot"
  zero = train_and_evaluate(t, str(tmp_path / "zero"))
  assert zero["transfer"]["item_overlap"]["overlap_items"] == 0 and zero["transfer"]["not_applicable"] is None
  assert 0 < zero["test"]["ndcg@10"] <= 1
  target_params, _ = ckpt.restore_best_params(str(tmp_path / "zero"))
  target_domain = pipeline.load_domain(t.data)
  target_table, _ = item_text.item_text_table(t.data, target_domain, t.model.text.encoder, progress=False)
  assert np.array_equal(np.asarray(target_params["item_embed"]["table"])[:target_table.shape[0]], target_table)
  for part in ("kernel", "gate", "bias"):  # the adaptor and the encoder come from the source
    assert np.array_equal(target_params["item_embed"]["adaptor"][part], params["item_embed"]["adaptor"][part])
  # fine-tuned with 10% of the target's users: some items are in no training sequence, and the
  # model scores them by their text: an unseen item given another's text scores as that one
  t.transfer.strategy, t.data.user_fraction = "full_finetune", 0.1
  tuned = train_and_evaluate(t, str(tmp_path / "tuned"))
  assert tuned["init"]["kind"] == "pretrained" and np.isfinite(tuned["test"]["ndcg@10"])
  p, _ = ckpt.restore_best_params(str(tmp_path / "tuned"))
  domain = pipeline.load_domain(t.data)
  seen = {int(i) for u in domain.train_users for i in domain.sequence(u)[:-2]}
  a, b = [i for i in range(1, domain.num_items + 1) if i not in seen][:2]
  with open(os.path.join(tmp_path / "tuned", "model.json")) as f:
    module = models.build(ml_collections.ConfigDict(json.load(f)["model"]), domain.num_items)
  p = jax.tree.map(np.array, p)
  x = jnp.asarray(pipeline.right_align(domain.sequence(domain.eval_users[0])[:-2], t.model.max_len))[None]
  before = np.asarray(module.apply({"params": p}, x, method="score_last"))[0]
  p["item_embed"]["table"][b] = p["item_embed"]["table"][a]  # item b gets item a's text
  scores = np.asarray(module.apply({"params": p}, x, method="score_last"))[0]
  assert scores[b] != pytest.approx(before[b], abs=1e-6)
  assert scores[a] - float(p["output_bias"][a]) == pytest.approx(scores[b] - float(p["output_bias"][b]), abs=1e-5)


def test_text_and_id_items_train_both_and_keep_the_text_frozen(data_dir, encoder_dir, tmp_path):
  c = _text_config(data_dir, encoder_dir, "text+id")
  c.data.domain = "target"
  out = train_and_evaluate(c, str(tmp_path / "run"))
  assert out["model"]["item_repr"] == "text+id" and np.isfinite(out["test"]["ndcg@10"])
  params, _ = ckpt.restore_best_params(str(tmp_path / "run"))
  fresh = models.build(ml_collections.ConfigDict(json.load(open(tmp_path / "run" / "model.json"))["model"]), 200)
  init = fresh.init(jax.random.PRNGKey(c.seed), jnp.zeros((1, c.model.max_len), jnp.int32))["params"]
  assert np.asarray(params["item_embed"]["id_embed"]["embedding"]).shape == (208, 16)
  assert out["transfer"]["frozen"] == int(np.prod(np.asarray(params["item_embed"]["table"]).shape))
  assert common.param_count(params) == common.param_count(init)


def test_adaptor_only_trains_the_adaptor_alone_and_frozen_encoder_the_item_side():
  from xrec.transfer import apply as transfer
  from xrec.transfer import schedule
  c = tiny_config("/tmp")
  c.model.update(dict(item_repr="text", embed_dim=16))
  c.model.text.update(dict(dim=8, experts=2))

  def trainable(strategy, repr_="text"):
    c.transfer.strategy, c.model.item_repr = strategy, repr_
    module, plan = transfer.prepare(c.transfer).bind(models.build(c.model, 20))
    params = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), jnp.zeros((1, c.model.max_len), jnp.int32)))
    mults = schedule.resolve(params["params"], plan.schedule)
    return {p for p, m in mults.items() if m is not None}, plan.budget(params["params"])

  paths, budget = trainable("adaptor_only")
  adaptor = {"item_embed/adaptor/bias", "item_embed/adaptor/gate", "item_embed/adaptor/kernel"}
  assert paths == adaptor
  assert budget["trainable"] == 2 * 8 + 2 * 8 * 16 + 8 * 2  # bias, kernel, gate
  # text + ID: a new catalogue's ID rows hold nothing pretrained, so they train with the adaptor
  assert trainable("adaptor_only", "text+id")[0] == adaptor | {"item_embed/id_embed/embedding"}
  paths, _ = trainable("frozen_encoder", "text+id")
  assert paths == {"item_embed/adaptor/bias", "item_embed/adaptor/gate", "item_embed/adaptor/kernel",
                   "item_embed/id_embed/embedding", "output_bias"}
  paths, _ = trainable("full_finetune")
  assert "item_embed/table" not in paths and "block_0/attn/query/kernel" in paths  # the text stays frozen
  with pytest.raises(ValueError, match="transfer.strategy='adaptor_only' does not apply to this encoder"):
    trainable("adaptor_only", "id")


@pytest.mark.parametrize("name", ["sasrec", "bert4rec", "gru4rec", "nextitnet"])
def test_every_encoder_trains_its_adaptor_through_text_items(name):
  """Text items in each encoder: the next-item loss reaches the adaptor (and the ID table with
  text+id), an item's score follows its text, and the adapted table is what is scored."""
  from xrec.models import losses
  import flax.linen as nn
  c = tiny_config("/tmp").model
  c.update(dict(name=name, item_repr="text+id", embed_dim=16, vocab_multiple=8))
  c.text.update(dict(dim=8, experts=2))
  module = models.build(c, 30)
  pool = np.array([i for i in range(1, 31) if i not in (5, 7)])  # items 5 and 7 are in no input
  x = jnp.asarray(np.random.default_rng(0).choice(pool, size=(4, c.max_len)), jnp.int32)
  # jitted: one program each instead of hundreds of one-operation programs (tests/conftest.py, jitted)
  params = nn.unbox(jitted(module.init)(jax.random.PRNGKey(0), x)["params"])
  table = np.random.default_rng(1).normal(size=params["item_embed"]["table"].shape).astype(np.float32)
  params["item_embed"]["table"] = jnp.asarray(table)
  targets = jnp.roll(x, -1, axis=1)

  def loss(p):
    hidden, tbl, bias = module.apply({"params": p}, x)
    return losses.full_softmax(hidden, targets, tbl, bias, num_items=30)[0]

  value, grads = jitted(jax.value_and_grad(loss))(params)
  assert np.isfinite(float(value))
  assert float(jnp.abs(grads["item_embed"]["adaptor"]["kernel"]).max()) > 0
  assert float(jnp.abs(grads["item_embed"]["id_embed"]["embedding"]).max()) > 0
  score = jitted(module.apply, method="score_last")
  scores = score({"params": params}, x)
  params["item_embed"]["table"] = params["item_embed"]["table"].at[5].set(table[7])
  moved = score({"params": params}, x)
  assert not np.allclose(scores[:, 5], moved[:, 5]) and np.allclose(scores[:, 7], moved[:, 7], atol=1e-5)
  # item 5 now has item 7's text: with text + ID they differ only by their ID rows and biases


def test_bert4rec_text_items_give_the_mask_token_a_learned_row_of_its_own():
  """The [MASK] token has no text: it gets its own learned row, not the adaptor's output for an
  empty text (which every item without text shares)."""
  import flax.linen as nn
  c = tiny_config("/tmp").model
  c.update(dict(name="bert4rec", item_repr="text", embed_dim=16, vocab_multiple=8))
  c.text.update(dict(dim=8, experts=2))
  module = models.build(c, 30)
  x = jnp.asarray(np.random.default_rng(0).integers(1, 31, size=(2, c.max_len)), jnp.int32)
  params = nn.unbox(module.init(jax.random.PRNGKey(0), x)["params"])
  assert params["item_embed"]["mask_embed"].shape == (16,)
  mask_id = module.mask_token_id

  def rows(ids):
    return module.apply({"params": params}, jnp.asarray(ids), method=lambda m, i: m.item_embed(i))

  assert np.allclose(rows([mask_id]), params["item_embed"]["mask_embed"])
  assert not np.allclose(rows([mask_id]), rows([3]))  # item 3's text is zero (an empty text) here
  table = module.apply({"params": params}, method=lambda m: m.item_embed.embedding)
  assert np.allclose(table[mask_id], params["item_embed"]["mask_embed"])
  hidden, _, _ = module.apply({"params": params}, x)
  assert np.isfinite(np.asarray(hidden)).all()
  # pruning that reshapes the item tables does not apply to text items
  from xrec.transfer import prune
  with pytest.raises(ValueError, match="needs an encoder with an ID item table and no text items"):
    prune.Pruner("items", module.roles())
