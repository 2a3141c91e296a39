"""Model registry: explicit, so a typo fails at start-up with the valid names.

Every entry meets the encoder contract of xrec/models/base.py. Adding an encoder: its file,
one line here (name -> builder from config.model) and its test (docs/architecture.md).
"""

from __future__ import annotations

import copy

import jax.numpy as jnp

from xrec.models import common
from xrec.models import text_tower

from xrec.models.bert4rec import BERT4Rec
from xrec.models.gru4rec import GRU4Rec
from xrec.models.hstu import HSTU
from xrec.models.nextitnet import NextItNet
from xrec.models.popularity import Popularity
from xrec.models.sasrec import SASRec

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def padded_vocab_size(num_rows: int, multiple: int) -> int:
  """Rows of the item table: ids 0..num_rows-1 rounded up so the vocab axis shards evenly."""
  return -(-num_rows // multiple) * multiple


def dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"Unknown dtype {name!r}; valid: {sorted(_DTYPES)}")
  return _DTYPES[name]


def _flag(cfg, field: str, default: bool) -> bool:
  value = cfg.get(field, default)
  if not isinstance(value, bool):
    raise ValueError(f"model.{field}={value!r} must be True or False")
  return value


def _common(cfg) -> dict:
  """The fields of config.model every encoder reads."""
  return dict(embed_dim=cfg.embed_dim, dropout=cfg.dropout, tie_embeddings=cfg.tie_embeddings,
              remat=cfg.remat, dtype=dtype(cfg.compute_dtype), param_dtype=jnp.float32,
              item_init_std=float(cfg.get("item_init_std", 0.0)), use_output_bias=_flag(cfg, "output_bias", True))


def _item_columns(cfg, cls) -> dict:
  """{"item_columns": ...} for a model whose item tables keep only some dims (prune.kind="dims"),
  checked; {} otherwise (so an encoder that does not narrow its item tables needs no such field)."""
  columns = tuple(int(i) for i in cfg.get("item_columns", ()))
  if not columns:
    return {}
  if "item_columns" not in getattr(cls, "__dataclass_fields__", {}):
    raise ValueError(f"model.item_columns (item tables narrowed by dims pruning) is not supported by "
                     f"{cls.__name__}: it needs an item_columns field and common.ScoresItems.embed_items")
  if list(columns) != sorted(set(columns)) or columns[0] < 0 or columns[-1] >= cfg.embed_dim:
    raise ValueError(f"model.item_columns={columns!r} must be increasing dims in [0, {cfg.embed_dim})")
  return {"item_columns": columns}


# model.name -> encoder class (meets xrec/models/base.py; has `config_defaults`, the fields of its
# config.model.<name> sub-dict, and `from_config(common fields, its sub-dict, vocab_size=,
# max_len=, num_items=)`)
MODELS: dict[str, type] = {
    "sasrec": SASRec,
    "bert4rec": BERT4Rec,
    "gru4rec": GRU4Rec,
    "nextitnet": NextItNet,
    "hstu": HSTU,
    "popularity": Popularity,
}


def model_class(name: str) -> type:
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid: {sorted(MODELS)}")
  return MODELS[name]


def _item_repr(cfg, cls) -> dict:
  """The text-based item fields (model.item_repr text / text+id), checked; {} for ID tables."""
  repr_ = cfg.get("item_repr", "id")
  if repr_ not in common.ITEM_REPRS:
    raise ValueError(f"model.item_repr={repr_!r} is not valid; valid: {list(common.ITEM_REPRS)}")
  if repr_ == "id":
    if (cfg.get("text") or {}).get("tune", ""):
      raise ValueError(f"model.text.tune={cfg.text.tune!r} trains the text tower of items by their text, but "
                       "model.item_repr='id' has none; set model.item_repr='text' or 'text+id', or model.text.tune=''")
    return {}
  if "item_repr" not in getattr(cls, "__dataclass_fields__", {}):
    raise ValueError(f"model.item_repr={repr_!r} (items by their text) is not supported by {cls.__name__}; "
                     "encoders with text items: sasrec, bert4rec, gru4rec, nextitnet")
  text = cfg.get("text") or {}
  if int(text.get("dim", 0)) < 1:
    raise ValueError(f"model.item_repr={repr_!r} needs model.text.dim, the width of the item text embeddings "
                     "(the trainer sets it from model.text.encoder)")
  if int(text.get("experts", 8)) < 1:
    raise ValueError(f"model.text.experts={text.get('experts')} must be >= 1 (the adaptor's experts)")
  if not cfg.tie_embeddings:
    raise ValueError(f"model.item_repr={repr_!r} scores items through their adapted text, so it needs "
                     "model.tie_embeddings=True")
  if tuple(cfg.get("item_columns", ())):
    raise ValueError(f"model.item_columns (dims pruning) does not apply to model.item_repr={repr_!r}")
  tower = None
  if text.get("tune", ""):
    tower = text_tower.TowerSpec(text.tune, text.get("tune_layers", 1), text.get("lora_rank", 8),
                                 int(text.get("tokens", 0)), tuple(text.get("arch", ())),
                                 tuple(tuple(b) for b in text.get("buckets", ()))).checked()
  return {"item_repr": repr_, "text_dim": int(text.dim), "text_experts": int(text.get("experts", 8)),
          "text_tower_spec": tower}


def check_item_repr(model_cfg) -> None:
  """model.item_repr and what it needs of the encoder, checked before the item texts are embedded
  (the text width, set from the encoder later, is not needed for that)."""
  cfg = copy.deepcopy(model_cfg)
  if cfg.get("item_repr", "id") != "id" and not cfg.text.get("dim"):
    with cfg.unlocked():
      cfg.text.dim = 1
  _item_repr(cfg, model_class(cfg.name))


def build(model_cfg, num_items: int, max_len: int | None = None):
  """The flax module named by `model_cfg.name` for a catalogue of `num_items` items (ids 1..num_items;
  encoders with a mask token get id num_items + 1 for it)."""
  cls = model_class(model_cfg.name)
  rows = num_items + 1 + int(cls.uses_mask_token)
  vocab = padded_vocab_size(rows, model_cfg.vocab_multiple)
  own = model_cfg.get(model_cfg.name)
  return cls.from_config({**_common(model_cfg), **_item_columns(model_cfg, cls), **_item_repr(model_cfg, cls)}, own,
                         vocab_size=vocab,
                         max_len=max_len or model_cfg.max_len, num_items=num_items)
