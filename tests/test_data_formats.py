"""Interaction-file formats, written in the exact published layouts (made-up rows)."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_data_fixtures import files_cfg  # noqa: E402

from xrec.data import formats, scenarios  # noqa: E402
from xrec.data.interactions import MalformedLineError  # noqa: E402


def rows(table):
  """[(user, item, rating or None, timestamp)] in file order."""
  return [(table.user_keys[u], table.item_keys[i], None if np.isnan(r) else float(r), int(t))
          for u, i, r, t in zip(table.users, table.items, table.ratings, table.timestamps)]


def test_sasrec_user_item_lines(tmp_path):
  path = tmp_path / "Beauty.txt"
  path.write_text("1 1\n1 2\n1 3\n2 3\n2 1\n\n")  # trailing blank line, as files often end
  t = formats.read_interactions(files_cfg(format="sasrec", path=str(path)))
  assert rows(t) == [("1", "1", None, 0), ("1", "2", None, 0), ("1", "3", None, 0), ("2", "3", None, 0),
                     ("2", "1", None, 0)]
  assert not t.has_ratings and not t.has_timestamps

  path.write_text("1 1\n1 2\n1 2 3\n2 3\n")
  with pytest.raises(MalformedLineError, match=r"Beauty\.txt:3: expected 'user item', got 3 fields: '1 2 3'"):
    formats.read_interactions(files_cfg(format="sasrec", path=str(path)))
  t = formats.read_interactions(files_cfg(format="sasrec", path=str(path), on_malformed="skip"))
  assert len(t) == 3 and t.skipped[str(path)]["count"] == 1
  assert t.skipped[str(path)]["examples"] == [f"{path}:3: expected 'user item', got 3 fields"]


def test_s3rec_sequence_lines_with_item_attributes(tmp_path):
  path = tmp_path / "Beauty.txt"
  path.write_text("1 10 11 12\n2 12 10 13 14\n")
  attrs = tmp_path / "Beauty_item2attributes.json"
  attrs.write_text(json.dumps({"10": [1, 2], "11": [2], "12": [3], "13": [], "14": [1]}))
  t = formats.read_interactions(files_cfg(format="s3rec", path=str(path), item_attributes_path=str(attrs)))
  assert [(u, i) for u, i, _, _ in rows(t)] == [("1", "10"), ("1", "11"), ("1", "12"), ("2", "12"), ("2", "10"),
                                               ("2", "13"), ("2", "14")]
  assert t.item_features["10"] == {"attributes": ["1", "2"]} and t.item_features["13"] == {"attributes": []}

  path.write_text("1 10 11 12\n2\n3 10 11 12\n")
  with pytest.raises(MalformedLineError, match=r"Beauty\.txt:2: expected 'user item1 item2 \.\.\.'"):
    formats.read_interactions(files_cfg(format="s3rec", path=str(path)))
  attrs.write_text('{"10": 5}')
  with pytest.raises(ValueError, match=r"item '10' maps to int, expected a list"):
    formats.read_interactions(files_cfg(format="s3rec", path=str(path), on_malformed="skip",
                                        item_attributes_path=str(attrs)))


def test_recbole_atomic_inter_any_columns(tmp_path):
  path = tmp_path / "ml-1m.inter"
  path.write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                  "1\t1193\t5\t978300760\n1\t661\t3\t978302109.0\n")
  t = formats.read_interactions(files_cfg(format="recbole", path=str(path)))
  assert rows(t) == [("1", "1193", 5.0, 978300760), ("1", "661", 3.0, 978302109)]
  assert t.has_ratings and t.has_timestamps

  path.write_text("item_id:token\tuser_id:token\n1193\t1\n661\t1\n")  # another order, no rating/timestamp
  t = formats.read_interactions(files_cfg(format="recbole", path=str(path)))
  assert rows(t) == [("1", "1193", None, 0), ("1", "661", None, 0)]
  assert not t.has_ratings and not t.has_timestamps

  path.write_text("user_id\titem_id:token\n1\t2\n")
  with pytest.raises(MalformedLineError, match=r"ml-1m\.inter:1: header field 'user_id' is not 'name:type'"):
    formats.read_interactions(files_cfg(format="recbole", path=str(path)))
  path.write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t5\n1\t3\n")
  with pytest.raises(MalformedLineError, match=r"ml-1m\.inter:3: expected at least 3 fields, got 2"):
    formats.read_interactions(files_cfg(format="recbole", path=str(path)))
  path.write_text("uid:token\titem_id:token\n1\t2\n")
  with pytest.raises(ValueError, match=r"column 'user_id' \(data.files.user_column\) is not in the header; "
                                       r"columns: \['uid', 'item_id'\]"):
    formats.read_interactions(files_cfg(format="recbole", path=str(path)))
  t = formats.read_interactions(files_cfg(format="recbole", path=str(path), user_column="uid"))
  assert rows(t) == [("1", "2", None, 0)]


def test_csv_amazon_2018_ratings_without_header(tmp_path):
  path = tmp_path / "Beauty.csv"
  path.write_text("0001234567,A1B2C3D4E5F6G7,5.0,1381017600\n0001234568,A1B2C3D4E5F6G7,4.0,1381017700\n"
                  "0001234567,AZZZ,1.0,1381017800\n")
  cfg = files_cfg(format="csv", path=str(path), header=False, item_column="0", user_column="1",
                  rating_column="2", timestamp_column="3")
  t = formats.read_interactions(cfg)
  assert rows(t) == [("A1B2C3D4E5F6G7", "0001234567", 5.0, 1381017600), ("A1B2C3D4E5F6G7", "0001234568", 4.0, 1381017700),
                     ("AZZZ", "0001234567", 1.0, 1381017800)]
  with open(path, "a") as f:
    f.write("0001234569,AZZZ,five,1381017900\n")
  with pytest.raises(MalformedLineError, match=r"Beauty\.csv:4: bad rating or timestamp"):
    formats.read_interactions(cfg)
  cfg.on_malformed = "skip"
  assert len(formats.read_interactions(cfg)) == 3
  with pytest.raises(ValueError, match=r"has no header .* 0-based indices"):
    formats.read_interactions(files_cfg(format="csv", path=str(path), header=False))


def test_csv_amazon_2023_with_header_ms_and_tsv(tmp_path):
  path = tmp_path / "All_Beauty.csv"
  path.write_text("user_id,parent_asin,rating,timestamp\nAGKHLEW2SOWHNMFQIJGBECAF7INQ,B00YQ6X8EO,5.0,1588687728923\n"
                  "AGKHLEW2SOWHNMFQIJGBECAF7INQ,B081TJ8YS3,4.0,1588615855070\n")
  cfg = files_cfg(format="csv", path=str(path), item_column="parent_asin", timestamp_unit="ms")
  t = formats.read_interactions(cfg)
  assert rows(t) == [("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B00YQ6X8EO", 5.0, 1588687728),
                     ("AGKHLEW2SOWHNMFQIJGBECAF7INQ", "B081TJ8YS3", 4.0, 1588615855)]
  with pytest.raises(ValueError, match=r"column 'item_id' \(data.files.item_column\) is not in the header; "
                                       r"columns: \['user_id', 'parent_asin', 'rating', 'timestamp'\]"):
    formats.read_interactions(files_cfg(format="csv", path=str(path)))

  tsv = tmp_path / "views.tsv"
  tsv.write_text('user\titem\twhen\nu1\t"a, b"\t2014-05-01T10:00:00\nu1\tc\t2014-05-02\n')
  t = formats.read_interactions(files_cfg(format="csv", path=str(tsv), delimiter="tab", user_column="user",
                                          item_column="item", rating_column="", timestamp_column="when",
                                          timestamp_unit="iso"))
  assert rows(t) == [("u1", "a, b", None, 1398938400), ("u1", "c", None, 1398988800)]
  with pytest.raises(ValueError, match="delimiter must be one character"):
    formats.read_interactions(files_cfg(format="csv", path=str(tsv), delimiter=";;"))
  with pytest.raises(ValueError, match=r"data.files.format='parquet' is not valid; valid: \['sasrec'"):
    formats.read_interactions(files_cfg(format="parquet", path=str(tsv)))
  with pytest.raises(FileNotFoundError, match=r"Interaction file not found: .*missing.csv \(data.files.path"):
    formats.read_interactions(files_cfg(format="csv", path=str(tmp_path / "missing.csv")))


def test_jsonl_amazon_2023_reviews(tmp_path):
  path = tmp_path / "All_Beauty.jsonl"
  reviews = [
      {"rating": 5.0, "title": "Great, \"really\"", "text": "Ça marche.\nYes", "images": [], "asin": "B00YQ6X8EO",
       "parent_asin": "B00YQ6X8EO", "user_id": "AGKH", "timestamp": 1588687728923, "helpful_vote": 0,
       "verified_purchase": True},
      {"rating": 4.0, "title": "ok", "text": "", "images": [], "asin": "B081TJ8YS3", "parent_asin": "B081TJ8YS3",
       "user_id": "AGKH", "timestamp": 1588615855070, "helpful_vote": 1, "verified_purchase": False},
  ]
  lines = [json.dumps(r, ensure_ascii=False) for r in reviews]
  path.write_text("\n".join(lines + ['{"rating": 3.0, "user_id": "X"', json.dumps({"user_id": "Y", "rating": 2})])
                  + "\n", encoding="utf-8")
  cfg = files_cfg(format="jsonl", path=str(path), item_column="parent_asin", timestamp_unit="ms")
  with pytest.raises(MalformedLineError, match=r"All_Beauty\.jsonl:3: invalid JSON"):
    formats.read_interactions(cfg)
  cfg.on_malformed = "skip"
  t = formats.read_interactions(cfg)
  assert rows(t) == [("AGKH", "B00YQ6X8EO", 5.0, 1588687728), ("AGKH", "B081TJ8YS3", 4.0, 1588615855)]
  assert t.skipped[str(path)]["count"] == 2
  assert "missing field(s) ['parent_asin', 'timestamp']" in t.skipped[str(path)]["examples"][1]


def test_item_attribute_files_csv_and_jsonl(tmp_path):
  inter = tmp_path / "x.txt"
  inter.write_text("1 a\n1 b\n")
  attrs = tmp_path / "items.csv"
  attrs.write_text('item_id,title,categories\na,"Lipstick, red",Beauty|Makeup\nb,Soap,Beauty\n')
  t = formats.read_interactions(files_cfg(format="sasrec", path=str(inter), item_attributes_path=str(attrs),
                                          item_attributes_format="csv", item_attributes_list_fields=("categories",)))
  assert t.item_features == {"a": {"title": "Lipstick, red", "categories": ["Beauty", "Makeup"]},
                             "b": {"title": "Soap", "categories": ["Beauty"]}}
  attrs.write_text("item_id,title\na,x,extra\n")
  with pytest.raises(MalformedLineError, match=r"items\.csv:2: expected 2 fields like the header, got 3"):
    formats.read_interactions(files_cfg(format="sasrec", path=str(inter), item_attributes_path=str(attrs),
                                        item_attributes_format="csv"))

  meta = tmp_path / "meta_All_Beauty.jsonl"
  meta.write_text("\n".join(json.dumps({"parent_asin": k, "title": k.upper(), "main_category": "All Beauty",
                                        "categories": ["Beauty", k], "images": [{"large": "u"}]}) for k in "ab"))
  t = formats.read_interactions(files_cfg(format="sasrec", path=str(inter), item_attributes_path=str(meta),
                                          item_attributes_format="jsonl", item_attributes_key="parent_asin",
                                          item_attributes_fields=("title", "categories")))
  assert t.item_features["b"] == {"title": "B", "categories": ["Beauty", "b"]}


def test_skipped_lines_are_reported_with_the_domains(tmp_path):
  path = tmp_path / "Beauty.txt"
  path.write_text("1 1\n1 2\n1 3\nbroken\n2 1\n2 2\n2 3\n")
  files = dict(files_cfg(format="sasrec", path=str(path), on_malformed="skip").to_dict(), name="interactions")
  options = {"source": files, "scenario": {"kind": "none"},
             "preprocess": {"min_rating": 0.0, "dedup": "keep", "user_core": 0, "item_core": 0, "min_seq_len": 3,
                            "max_seq_len": 0}}
  domains, report = scenarios.build_domains(options, {})
  assert len(domains["main"].user_keys) == 2
  assert report["skipped_lines"][str(path)]["count"] == 1


@pytest.mark.parametrize("fmt,content,line", [
    ("sasrec", b"1 10\n2 caf\xe9\n3 30\n", 2),
    ("csv", b"user_id,parent_asin,rating,timestamp\nu1,i1,5,1\nu2,caf\xe9,4,2\nu3,i3,3,3\n", 3),
])
def test_a_line_not_in_the_files_encoding_is_named_and_can_be_skipped(tmp_path, fmt, content, line):
  """A non-UTF-8 byte names file:line and the encoding setting; on_malformed=skip skips and counts it;
  the right data.files.encoding reads it."""
  path = tmp_path / "data.txt"
  path.write_bytes(content)
  extra = dict(user_column="user_id", item_column="parent_asin", rating_column="rating",
               timestamp_column="timestamp") if fmt == "csv" else {}
  with pytest.raises(ValueError, match=rf"{path}:{line}: bytes b'\\xe9.*' at column \d+ are not valid utf-8 \(set data.files.encoding"):
    formats.read_interactions(files_cfg(format=fmt, path=str(path), **extra))
  t = formats.read_interactions(files_cfg(format=fmt, path=str(path), on_malformed="skip", **extra))
  assert len(t.users) == 2 and t.skipped[str(path)]["count"] == 1
  t = formats.read_interactions(files_cfg(format=fmt, path=str(path), encoding="latin-1", **extra))
  assert "café" in t.item_keys


def test_a_directory_as_the_data_file_says_so(tmp_path):
  with pytest.raises(IsADirectoryError, match=r"data.files.path=.* is a directory; it must be the interaction file"):
    formats.read_interactions(files_cfg(format="sasrec", path=str(tmp_path)))
