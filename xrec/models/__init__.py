"""Model registry: explicit, so a typo fails at start-up with the valid names."""

from __future__ import annotations

import jax.numpy as jnp

from xrec.models.popularity import Popularity
from xrec.models.sasrec import SASRec

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
MODELS = ("sasrec", "popularity")


def padded_vocab_size(num_items: int, multiple: int) -> int:
  """Rows of the item table: items + padding id 0, rounded up so the vocab axis shards evenly."""
  return -(-(num_items + 1) // multiple) * multiple


def dtype(name: str):
  if name not in _DTYPES:
    raise ValueError(f"Unknown dtype {name!r}; valid: {sorted(_DTYPES)}")
  return _DTYPES[name]


def build(model_cfg, num_items: int, max_len: int):
  """Returns the flax module named by `model_cfg.name` for a catalogue of `num_items` items."""
  vocab = padded_vocab_size(num_items, model_cfg.vocab_multiple)
  if model_cfg.name == "sasrec":
    return SASRec(
        vocab_size=vocab, max_len=max_len, embed_dim=model_cfg.embed_dim,
        num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads, mlp_dim=model_cfg.mlp_dim,
        dropout=model_cfg.dropout, tie_embeddings=model_cfg.tie_embeddings, remat=model_cfg.remat,
        dtype=dtype(model_cfg.compute_dtype), param_dtype=jnp.float32)
  if model_cfg.name == "popularity":
    return Popularity(vocab_size=vocab)
  raise ValueError(f"Unknown model {model_cfg.name!r}; valid: {list(MODELS)}")
