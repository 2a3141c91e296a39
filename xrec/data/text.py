"""One text per item from the features a dataset stores (issue 14): MovieLens titles and genres,
S3Rec `item2attributes`, Amazon metadata (title, brand, categories, description), any CSV / JSON
lines attribute file, the synthetic generator's item text.

`item_text(domain, text_cfg)` -> (texts, report): texts[i] is item id i's string (texts[0] = ""
for padding), the chosen fields' values joined as "field: value" parts ("; "-separated, lists
joined by ", "), and a report of how many items had text and what the items without any got
(`config.data.text.missing`).
"""

from __future__ import annotations

import hashlib

DEFAULT_FIELDS = ("title", "text", "brand", "categories", "genres", "attributes", "description")
MISSING = ("empty", "attributes", "error")


def _value_text(value) -> str:
  if isinstance(value, (list, tuple)):
    return ", ".join(_value_text(v) for v in value if _value_text(v))
  if isinstance(value, dict):
    return ", ".join(f"{k} {_value_text(v)}" for k, v in value.items())
  return "" if value is None else str(value).strip()


def _joined(features: dict, fields) -> str:
  parts = []
  for field in fields:
    text = _value_text(features.get(field))
    if text:
      parts.append(text if field in ("title", "text") else f"{field}: {text}")
  return "; ".join(parts)


def item_text(item_keys, item_features: dict, text_cfg, where: str = "the dataset") -> tuple[list[str], dict]:
  """Texts of the items `item_keys` (id i = item_keys[i - 1]) from `item_features` (raw key ->
  {feature: value}, the dataset's metadata), by `text_cfg` (config.data.text: fields, missing)."""
  missing = text_cfg.get("missing", "empty")
  if missing not in MISSING:
    raise ValueError(f"data.text.missing={missing!r} is not valid; valid: {list(MISSING)}")
  present = sorted({f for feats in item_features.values() for f in feats})
  fields = tuple(text_cfg.get("fields", ()) or ())
  if fields:
    absent = [f for f in fields if f not in present]
    if absent:
      raise ValueError(f"data.text.fields names {absent}, which no item of {where} has; its item features: "
                       f"{present or 'none (the source stores no item text)'}")
  else:
    fields = tuple(f for f in DEFAULT_FIELDS if f in present)
  texts, without, filled = [""], [], 0
  for key in item_keys:
    feats = item_features.get(key, {})
    text = _joined(feats, fields)
    if not text:
      without.append(key)
      if missing == "error":
        raise ValueError(f"item {key!r} of {where} has no text in the fields {list(fields)} "
                         "(data.text.missing='error'); set data.text.missing='empty' or 'attributes' to accept "
                         "such items")
      if missing == "attributes":
        text = _joined(feats, sorted(feats))
        filled += bool(text)
    texts.append(text)
  if item_keys and len(without) == len(item_keys) and filled == 0:
    raise ValueError(f"no item of {where} has a text: its item features are {present or 'none'} and the text "
                     f"fields {list(fields) or list(DEFAULT_FIELDS)} are empty for every item; set data.text.fields "
                     "to features it has, or give the source item metadata (data.files.item_attributes_path)")
  report = {"fields": list(fields), "items": len(item_keys), "without_text": len(without),
            "filled_from_attributes": filled, "empty": sum(1 for t in texts[1:] if not t),
            "missing_policy": missing, "examples_without_text": without[:5]}
  return texts, report


def text_sha(texts: list[str]) -> str:
  """Short hash of the texts in id order (names a cache of their embeddings)."""
  digest = hashlib.sha256()
  for t in texts:
    digest.update(t.encode("utf-8") + b"\x00")
  return digest.hexdigest()[:16]
