"""Readers for the interaction files papers publish (see /work/shared/FORMATS.md).

`read_interactions(files_cfg)` reads one file into an `InteractionTable`.
`files_cfg` is `config.data.files` (a ConfigDict or dict) with these fields:

  format:          sasrec | s3rec | recbole | csv | jsonl
  path:            the interaction file
  encoding:        text encoding (default utf-8)
  delimiter:       csv only: ',' (default), '\\t' / 'tab' for TSV, or any single character
  header:          csv only: the first line names the columns
  user_column, item_column, rating_column, timestamp_column:
                   csv with header / recbole / jsonl: column or field names;
                   csv without header: 0-based column indices ('0', '1', ...);
                   '' = the column is absent (rating / timestamp only)
  timestamp_unit:  s | ms | us | ns (numbers since the epoch) | iso (ISO-8601 date/time, UTC)
  on_malformed:    raise (error naming file:line) | skip (count the line, report it in the statistics)
  keys:            auto | file | shared: whether user and item keys are the file's own ("<file name>:<id>")
                   or raw ids matched across files (auto: per file for sasrec / s3rec, whose releases
                   number every file 1..N; shared for the others); see key_namespace
  item_attributes_path:   optional item-attribute file, one of
  item_attributes_format: json  ({"item": [attr, ...]}, S3Rec *_item2attributes.json -> feature 'attributes')
                          csv   (header; key column + feature columns)
                          jsonl (one JSON object per item, e.g. Amazon 2023 meta files)
  item_attributes_key:    csv / jsonl: the column / field holding the item key
  item_attributes_fields: csv / jsonl: the columns / fields kept (empty = all but the key)
  item_attributes_list_fields:    csv: columns that hold lists, split on item_attributes_list_separator

Formats:
  sasrec  `user item` per line, whitespace-separated, chronological within user (no ratings, no timestamps)
  s3rec   `user item1 item2 ...` per line, chronological (no ratings, no timestamps)
  recbole RecBole atomic `.inter`: tab-separated, header of `name:type` (any subset/order of columns);
          rating / timestamp are used when the header has them
  csv     delimited text with or without header, columns mapped as above (Amazon 2018: no header,
          user_column='1', item_column='0', rating_column='2', timestamp_column='3'; Amazon 2023:
          header, user_column='user_id', item_column='parent_asin', timestamp_unit='ms')
  jsonl   one JSON object per line, fields mapped as above (Amazon 2023 reviews)

Sources without timestamps get timestamp 0 for every row; their file order is the time order.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import datetime
import json
import logging
import math
import os

from xrec.data.interactions import InteractionTable, TableAccumulator, malformed

log = logging.getLogger("xrec")

TIMESTAMP_UNITS = {"s": 1, "ms": 1000, "us": 1_000_000, "ns": 1_000_000_000, "iso": None}
ON_MALFORMED = ("raise", "skip")
ATTRIBUTE_FORMATS = ("json", "csv", "jsonl")


def _get(cfg, name, default=None):
  return cfg.get(name, default) if hasattr(cfg, "get") else getattr(cfg, name, default)


def delimiter_of(value: str) -> str:
  """'\\t', 'tab' and a real tab all mean TSV (a tab is awkward to pass on a command line)."""
  if value in ("", None):
    return ","
  if value in ("\\t", "tab", "\t"):
    return "\t"
  if len(value) != 1:
    raise ValueError(f"data.files.delimiter must be one character, '\\t' or 'tab'; got {value!r}")
  return value


def parse_timestamp(text, unit: str) -> int:
  """Seconds since the epoch (int) from a number in `unit` or an ISO-8601 string; ValueError if bad."""
  if unit == "iso":
    t = datetime.datetime.fromisoformat(str(text).strip())
    if t.tzinfo is None:
      t = t.replace(tzinfo=datetime.timezone.utc)
    return int(t.timestamp())
  if isinstance(text, bool):
    raise ValueError(f"not a timestamp: {text!r}")
  if isinstance(text, (int, float)):
    value = text
  else:
    text = str(text).strip()
    try:
      value = int(text)
    except ValueError:
      value = float(text)  # e.g. RecBole's '978300760.0'
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError(f"not a finite timestamp: {text!r}")
  return int(value // TIMESTAMP_UNITS[unit])


def parse_rating(text) -> float:
  if isinstance(text, bool):
    raise ValueError(f"not a rating: {text!r}")
  value = float(text)
  if not math.isfinite(value):
    raise ValueError(f"not a finite rating: {text!r}")
  return value


def _check_choice(name, value, valid):
  if value not in valid:
    raise ValueError(f"data.files.{name}={value!r} is not valid; valid: {list(valid)}")


def read_interactions(files_cfg, name: str = "interactions") -> InteractionTable:
  """Reads `files_cfg.path` in `files_cfg.format` (+ optional item attributes) into a table."""
  fmt = _get(files_cfg, "format")
  _check_choice("format", fmt, READERS)
  _check_choice("timestamp_unit", _get(files_cfg, "timestamp_unit", "s"), TIMESTAMP_UNITS)
  _check_choice("on_malformed", _get(files_cfg, "on_malformed", "raise"), ON_MALFORMED)
  path = _get(files_cfg, "path")
  if not path:
    raise ValueError("data.files.path is empty: set it to the interaction file to read "
                     f"(format {fmt!r})")
  if os.path.isdir(path):
    raise IsADirectoryError(f"data.files.path={path!r} is a directory; it must be the interaction file itself "
                            f"(format {fmt!r})")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Interaction file not found: {path} (data.files.path, format {fmt!r})")
  acc = TableAccumulator(name)
  has_ratings, has_timestamps = READERS[fmt](path, files_cfg, acc)
  item_features = {}
  if _get(files_cfg, "item_attributes_path", ""):
    item_features = read_item_attributes(files_cfg)
  table = acc.table(has_ratings, has_timestamps, item_features=item_features)
  namespace = key_namespace(files_cfg)
  if namespace and item_features and _get(files_cfg, "item_attributes_format", "json") == "json":
    log.warning("%s: the keys are numbered per file (data.files.key_scope), and so are the attribute ids of %s "
                "(S3Rec's item2attributes): as item text they carry nothing across files; set "
                "data.files.key_scope=shared only if both files share one numbering",
                path, _get(files_cfg, "item_attributes_path"))
  if namespace:  # the file numbers its own users and items: its keys mean nothing in another file
    table = dataclasses.replace(
        table, user_keys=[f"{namespace}:{k}" for k in table.user_keys],
        item_keys=[f"{namespace}:{k}" for k in table.item_keys],
        item_features={f"{namespace}:{k}": v for k, v in table.item_features.items()})
  return table


# Layouts whose published releases number users and items 1..N in each file (the SASRec and S3Rec
# repositories renumber every dataset): equal ids in two such files are different users and items.
NUMBERED_PER_FILE = ("sasrec", "s3rec")
KEY_SCOPES = ("auto", "file", "shared")


def key_namespace(files_cfg) -> str:
  """The prefix of this file's user and item keys ("" = the raw keys). data.files.key_scope: "file" keys
  are the file's own ("<file name>:<id>", so no key matches another file's), "shared" keys are the
  raw ids (the user declares that files share a numbering: ASINs, MovieLens ids, one renumbering
  over several files), "auto" = "file" for layouts numbered per file (NUMBERED_PER_FILE) and
  "shared" for the others."""
  scope = _get(files_cfg, "key_scope") or _get(files_cfg, "keys") or "auto"  # `keys`: records from before
  _check_choice("key_scope", scope, KEY_SCOPES)
  if scope == "auto":
    scope = "file" if _get(files_cfg, "format") in NUMBERED_PER_FILE else "shared"
  return os.path.basename(_get(files_cfg, "path")) if scope == "file" else ""


class _DecodedLines:
  """The lines of a text file decoded one by one (line endings kept, as csv wants them), so that a
  line that is not valid in data.files.encoding is named by file:line and, with
  on_malformed='skip', skipped and counted like any malformed line (`acc`; None: always an error).
  UTF-16/32 files, whose line breaks are not single bytes, are read by Python's text decoder."""

  def __init__(self, path, cfg, acc=None):
    self.path, self.cfg, self.acc = path, cfg, acc
    self.encoding = _get(cfg, "encoding", "utf-8") or "utf-8"
    self.handle = None

  def __enter__(self):
    wide = codecs.lookup(self.encoding).name.startswith(("utf-16", "utf-32"))
    if wide:
      self.handle = open(self.path, encoding=self.encoding, newline="")
      return self.handle
    self.handle = open(self.path, "rb")
    return self._lines()

  def __exit__(self, *exc):
    self.handle.close()

  def _lines(self):
    for line_no, raw in enumerate(self.handle, 1):
      try:
        yield raw.decode(self.encoding)
      except UnicodeDecodeError as e:
        reason = (f"bytes {raw[e.start:e.start + 4]!r} at column {e.start + 1} are not valid {self.encoding} "
                  f"(set data.files.encoding to the file's encoding, e.g. 'latin-1' or 'cp1252')")
        if self.acc is not None and _get(self.cfg, "on_malformed", "raise") == "skip":
          self.acc.skip(self.path, line_no, reason)
          continue
        raise malformed(self.path, line_no, reason, raw.decode(self.encoding, "replace").rstrip("\r\n"),
                        skippable=self.acc is not None) from None


def _open(path, cfg, acc=None):
  return _DecodedLines(path, cfg, acc)


def _fail_or_skip(acc, cfg, path, line_no, reason, line):
  if _get(cfg, "on_malformed", "raise") == "skip":
    acc.skip(path, line_no, reason)
  else:
    raise malformed(path, line_no, reason, line, skippable=True)


def _read_sasrec(path, cfg, acc):
  with _open(path, cfg, acc) as f:
    for line_no, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue  # blank lines (e.g. a trailing newline) carry nothing
      if len(fields) != 2:
        _fail_or_skip(acc, cfg, path, line_no, f"expected 'user item', got {len(fields)} fields", line.rstrip("\n"))
        continue
      acc.add(fields[0], fields[1])
  return False, False


def _read_s3rec(path, cfg, acc):
  with _open(path, cfg, acc) as f:
    for line_no, line in enumerate(f, 1):
      fields = line.split()
      if not fields:
        continue
      if len(fields) < 2:
        _fail_or_skip(acc, cfg, path, line_no, "expected 'user item1 item2 ...', got a user without items",
                      line.rstrip("\n"))
        continue
      for item in fields[1:]:
        acc.add(fields[0], item)
  return False, False


def _column_index(header, name, path, what, required):
  if name in ("", None):
    if required:
      raise ValueError(f"data.files.{what} is empty; it must name a column of {path}: {header}")
    return None
  if name in header:
    return header.index(name)
  if required:
    raise ValueError(f"{path}: column {name!r} (data.files.{what}) is not in the header; columns: {header}")
  return None


def _read_rows(path, cfg, acc, rows, first_line_no, indices, unit):
  """Shared row loop of recbole / csv: rows of strings -> table rows."""
  u_col, i_col, r_col, t_col = indices
  width = 1 + max(c for c in indices if c is not None)
  for line_no, row in enumerate(rows, first_line_no):
    if not row or (len(row) == 1 and not row[0].strip()):
      continue
    if len(row) < width:
      _fail_or_skip(acc, cfg, path, line_no, f"expected at least {width} fields, got {len(row)}", str(row))
      continue
    user, item = row[u_col].strip(), row[i_col].strip()
    if not user or not item:
      _fail_or_skip(acc, cfg, path, line_no, "empty user or item", str(row))
      continue
    try:
      rating = parse_rating(row[r_col]) if r_col is not None else math.nan
      ts = parse_timestamp(row[t_col], unit) if t_col is not None else 0
    except ValueError as e:
      _fail_or_skip(acc, cfg, path, line_no, f"bad rating or timestamp ({e})", str(row))
      continue
    acc.add(user, item, rating, ts)
  return r_col is not None, t_col is not None


def _read_recbole(path, cfg, acc):
  with _open(path, cfg, acc) as f:
    rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
      typed = next(rows)
    except StopIteration:
      raise ValueError(f"{path}: empty file; a RecBole .inter file starts with a 'name:type' header") from None
    header = []
    for field in typed:
      name, sep, ftype = field.partition(":")
      if not sep or ftype not in ("token", "float", "token_seq", "float_seq"):
        raise malformed(path, 1, f"header field {field!r} is not 'name:type' with type token|float|token_seq|"
                        "float_seq", "\t".join(typed))
      header.append(name)
    indices = (_column_index(header, _get(cfg, "user_column", "user_id"), path, "user_column", True),
               _column_index(header, _get(cfg, "item_column", "item_id"), path, "item_column", True),
               _column_index(header, _get(cfg, "rating_column", "rating"), path, "rating_column", False),
               _column_index(header, _get(cfg, "timestamp_column", "timestamp"), path, "timestamp_column", False))
    return _read_rows(path, cfg, acc, rows, 2, indices, _get(cfg, "timestamp_unit", "s"))


def _read_csv(path, cfg, acc):
  delimiter = delimiter_of(_get(cfg, "delimiter", ","))
  with _open(path, cfg, acc) as f:
    rows = csv.reader(f, delimiter=delimiter)
    names = [_get(cfg, k, "") for k in ("user_column", "item_column", "rating_column", "timestamp_column")]
    what = ("user_column", "item_column", "rating_column", "timestamp_column")
    if _get(cfg, "header", True):
      try:
        header = [h.strip() for h in next(rows)]
      except StopIteration:
        raise ValueError(f"{path}: empty file (data.files.header=True expects a header line)") from None
      indices = tuple(_column_index(header, n, path, w, True) if n else None for n, w in zip(names, what))
      if indices[0] is None or indices[1] is None:
        raise ValueError(f"data.files.user_column and item_column must name columns of {path}: {header}")
      first = 2
    else:
      indices = []
      for n, w in zip(names, what):
        if n in ("", None):
          indices.append(None)
        elif str(n).isdigit():
          indices.append(int(n))
        else:
          raise ValueError(f"data.files.{w}={n!r}: {path} has no header (data.files.header=False), so columns "
                           "are 0-based indices like '0', '1'")
      if indices[0] is None or indices[1] is None:
        raise ValueError("data.files.user_column and item_column are required (0-based indices without header)")
      indices, first = tuple(indices), 1
    return _read_rows(path, cfg, acc, rows, first, indices, _get(cfg, "timestamp_unit", "s"))


def _read_jsonl(path, cfg, acc):
  unit = _get(cfg, "timestamp_unit", "s")
  u_f, i_f = _get(cfg, "user_column", "user_id"), _get(cfg, "item_column", "item_id")
  r_f, t_f = _get(cfg, "rating_column", ""), _get(cfg, "timestamp_column", "")
  with _open(path, cfg, acc) as f:
    for line_no, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        rec = json.loads(line)
      except json.JSONDecodeError as e:
        _fail_or_skip(acc, cfg, path, line_no, f"invalid JSON ({e.msg} at column {e.colno})", line.rstrip("\n"))
        continue
      if not isinstance(rec, dict):
        _fail_or_skip(acc, cfg, path, line_no, "expected a JSON object", line.rstrip("\n"))
        continue
      missing = [k for k in (u_f, i_f, r_f, t_f) if k and k not in rec]
      if missing:
        _fail_or_skip(acc, cfg, path, line_no, f"missing field(s) {missing}; fields: {sorted(rec)}",
                      line.rstrip("\n"))
        continue
      user, item = str(rec[u_f]).strip(), str(rec[i_f]).strip()
      if not user or not item or rec[u_f] is None or rec[i_f] is None:
        _fail_or_skip(acc, cfg, path, line_no, "empty user or item", line.rstrip("\n"))
        continue
      try:
        rating = parse_rating(rec[r_f]) if r_f else math.nan
        ts = parse_timestamp(rec[t_f], unit) if t_f else 0
      except (ValueError, TypeError) as e:
        _fail_or_skip(acc, cfg, path, line_no, f"bad rating or timestamp ({e})", line.rstrip("\n"))
        continue
      acc.add(user, item, rating, ts)
  return bool(r_f), bool(t_f)


def read_item_attributes(cfg) -> dict:
  """Item key -> {feature -> value} from `cfg.item_attributes_path` (format: json | csv | jsonl)."""
  path = _get(cfg, "item_attributes_path")
  fmt = _get(cfg, "item_attributes_format", "json")
  if fmt not in ATTRIBUTE_FORMATS:
    raise ValueError(f"data.files.item_attributes_format={fmt!r} is not valid; valid: {list(ATTRIBUTE_FORMATS)}")
  if os.path.isdir(path):
    raise IsADirectoryError(f"data.files.item_attributes_path={path!r} is a directory; it must be the file itself")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"Item attribute file not found: {path} (data.files.item_attributes_path)")
  key = _get(cfg, "item_attributes_key", "item_id")
  fields = list(_get(cfg, "item_attributes_fields", ()) or ())
  out = {}
  if fmt == "json":
    with _open(path, cfg) as f:
      try:
        mapping = json.loads("".join(f))
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    if not isinstance(mapping, dict):
      raise ValueError(f"{path}: expected a JSON object mapping item -> list of attributes")
    for item, attrs in mapping.items():
      if not isinstance(attrs, list):
        raise ValueError(f"{path}: item {item!r} maps to {type(attrs).__name__}, expected a list of attributes")
      out[str(item)] = {"attributes": [str(a) for a in attrs]}
  elif fmt == "csv":
    list_fields = set(_get(cfg, "item_attributes_list_fields", ()) or ())
    sep = _get(cfg, "item_attributes_list_separator", "|") or "|"
    with _open(path, cfg) as f:
      rows = csv.reader(f, delimiter=delimiter_of(_get(cfg, "item_attributes_delimiter", ",")))
      header = [h.strip() for h in next(rows, [])]
      if key not in header:
        raise ValueError(f"{path}: key column {key!r} (data.files.item_attributes_key) not in header {header}")
      keep = fields or [h for h in header if h != key]
      for name in keep:
        if name not in header:
          raise ValueError(f"{path}: column {name!r} (data.files.item_attributes_fields) not in header {header}")
      for line_no, row in enumerate(rows, 2):
        if not row:
          continue
        if len(row) != len(header):
          raise malformed(path, line_no, f"expected {len(header)} fields like the header, got {len(row)}", str(row))
        feats = {}
        for name in keep:
          value = row[header.index(name)]
          feats[name] = [v for v in value.split(sep) if v] if name in list_fields else value
        out[row[header.index(key)].strip()] = feats
  else:
    with _open(path, cfg) as f:
      for line_no, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          rec = json.loads(line)
        except json.JSONDecodeError as e:
          raise malformed(path, line_no, f"invalid JSON ({e.msg})", line.rstrip("\n")) from None
        if not isinstance(rec, dict) or key not in rec:
          raise malformed(path, line_no, f"expected a JSON object with key field {key!r}", line.rstrip("\n"))
        keep = fields or [k for k in rec if k != key]
        out[str(rec[key])] = {k: rec.get(k) for k in keep}
  return out


# data.files.format -> reader(path, files_cfg, accumulator) -> (has ratings, has timestamps).
# Adding a format: its reader above, one line here, a test writing the published layout.
READERS = {"sasrec": _read_sasrec, "s3rec": _read_s3rec, "recbole": _read_recbole, "csv": _read_csv,
           "jsonl": _read_jsonl}
FORMATS = tuple(READERS)
