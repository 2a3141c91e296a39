"""Scenario splits: by user attribute (cross-region), by item attribute (cross-genre), cross-app."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_data_fixtures as F  # noqa: E402

from xrec.defaults import base_config  # noqa: E402
from xrec.data import pipeline, scenarios  # noqa: E402

PRE = {"min_rating": 0.0, "dedup": "keep", "user_core": 0, "item_core": 0, "min_seq_len": 3, "max_seq_len": 0}
EAST, WEST = ["0", "1", "2", "3", "4"], ["5", "6", "7", "8", "9"]


def split(tmp_path, release="1m", preprocess=None, **scenario):
  if release == "1m":
    F.write_ml1m(str(tmp_path))
  elif release == "100k":
    F.write_ml100k(str(tmp_path))
  else:
    F.write_ml_csv(str(tmp_path), "ml-20m")
  options = {"source": {"name": "movielens", "release": release}, "preprocess": dict(PRE, **(preprocess or {})),
             "scenario": dict({"kind": "none", "attribute": "", "source_values": [], "target_values": [],
                               "multi_value_rule": "drop"}, **scenario)}
  return scenarios.build_domains(options, {"manual_dir": str(tmp_path), "download": False,
                                           "verify_checksum": False})


def test_us_region_from_zip_codes():
  assert [scenarios.us_region(z) for z in ("02139", "98107-2117", "T8H1N", "", None, " 55455")] == [
      "0", "9", "non_us", "unknown", "unknown", "5"]


@pytest.mark.parametrize("release", ["1m", "100k"])
def test_cross_region_disjoint_users_shared_items(tmp_path, release):
  domains, report = split(tmp_path, release, kind="user_attribute", attribute="region", source_values=EAST,
                          target_values=WEST)
  src, tgt = domains["source"], domains["target"]
  assert sorted(src.user_keys, key=int) == ["1", "2", "3", "4", "5"]
  assert sorted(tgt.user_keys, key=int) == ["6", "7", "8", "9", "10"]
  assert report["overlap"]["source~target"] == {"shared_users": 0, "shared_items": 10}
  assert report["users_per_value"] == {"0": 1, "1": 2, "3": 1, "4": 1, "5": 1, "6": 1, "8": 1, "9": 2,
                                       "non_us": 1, "unknown": 1}
  assert report["users_without_side"] == 2 and report["interactions_without_side"] == 12
  assert all(F.USERS[u][5][0] in "01234" for u in src.user_keys)
  assert src.user_features["2"]["zip"] == "10001-1234"

  # target_values empty = every other region; non-US users only when listed
  domains, _ = split(tmp_path, release, kind="user_attribute", attribute="region", source_values=EAST)
  assert "11" not in domains["target"].user_keys and len(domains["target"].user_keys) == 5
  domains, _ = split(tmp_path, release, kind="user_attribute", attribute="region", source_values=EAST,
                     target_values=["non_us", "unknown"])
  assert sorted(domains["target"].user_keys) == ["11", "12"]


def test_split_by_any_user_feature(tmp_path):
  domains, report = split(tmp_path, kind="user_attribute", attribute="gender", source_values=["F"],
                          target_values=["M"])
  assert sorted(domains["source"].user_keys, key=int) == ["1", "3", "5", "7", "9", "11"]
  assert report["users_per_value"] == {"F": 6, "M": 6}
  with pytest.raises(ValueError, match=r"user attribute 'height' needs the user feature 'height'; this source has "
                                       r"user features \['age', 'gender', 'occupation', 'zip'\]"):
    split(tmp_path, kind="user_attribute", attribute="height", source_values=["1"])
  with pytest.raises(ValueError, match=r"needs the user feature 'zip'; this source has user features \[\]"):
    split(tmp_path / "csv", "20m", kind="user_attribute", attribute="region", source_values=EAST)
  with pytest.raises(ValueError, match="source_values is empty"):
    split(tmp_path, kind="user_attribute", attribute="region")


THRILL = ["Action", "Thriller", "Crime"]


@pytest.mark.parametrize("rule,source_items,target_items", [
    ("drop", {"5", "9"}, {"1", "3", "4", "6", "8"}),
    ("first", {"2", "5", "9", "10"}, {"1", "3", "4", "6", "7", "8"}),  # 2 Action|Children's, 7 Drama|Thriller
    ("source", {"2", "5", "7", "9", "10"}, {"1", "3", "4", "6", "8"}),
    ("target", {"5", "9"}, {"1", "2", "3", "4", "6", "7", "8", "10"}),
])
def test_cross_genre_rules_for_multi_genre_items(tmp_path, rule, source_items, target_items):
  # min_seq_len=1: the tiny fixture has only a few movies per side
  domains, report = split(tmp_path, preprocess={"min_seq_len": 1}, kind="item_attribute", attribute="genres",
                          source_values=THRILL, multi_value_rule=rule)
  src, tgt = domains["source"], domains["target"]
  assert set(src.item_keys) == source_items and set(tgt.item_keys) == target_items
  assert report["items_on_both_sides"] == 3  # 2, 7, 10
  assert report["overlap"]["source~target"]["shared_items"] == 0
  assert report["overlap"]["source~target"]["shared_users"] == len(set(src.user_keys) & set(tgt.user_keys)) > 0
  for u, seq in zip(src.user_keys, src.sequences):  # each side keeps the user's items of that side, in order
    full = [m for uu, m, _, ts in sorted(F.ratings(), key=lambda r: r[3]) if uu == u]
    assert [src.item_keys[i - 1] for i in seq] == [m for m in full if m in source_items]


def test_cross_genre_default_drop_with_target_values_and_leave_one_out_length(tmp_path):
  domains, report = split(tmp_path, kind="item_attribute", attribute="genres", source_values=["Comedy"],
                          target_values=["Drama"])
  # Comedy-only: 3, 6 (Comedy|Romance counts: Romance is on neither side), 1, 10 (Action is on neither side)
  assert set(domains["source"].item_keys) <= {"1", "3", "6", "10"}
  assert set(domains["target"].item_keys) <= {"4", "7", "8"}
  assert all(len(s) >= 3 for d in domains.values() for s in d.sequences)
  assert report["items_without_side"] == 3  # 2, 5, 9
  with pytest.raises(ValueError, match=r"item attribute 'category' not found; this source has item features"):
    split(tmp_path, kind="item_attribute", attribute="category", source_values=["x"])
  with pytest.raises(ValueError, match=r"multi_value_rule='both' is not valid"):
    split(tmp_path, kind="item_attribute", attribute="genres", source_values=["Drama"], multi_value_rule="both")
  with pytest.raises(ValueError, match="the source domain is empty after preprocessing"):
    split(tmp_path, kind="item_attribute", attribute="genres", source_values=["Western"])


def write_app(path, users, items):
  path.write_text("".join(f"{u} {i}\n" for u in users for i in items))
  return str(path)


@pytest.mark.parametrize("shared", [True, False])
def test_cross_app_pairs_two_sources_by_raw_key_when_the_files_share_their_keys(tmp_path, shared):
  a = write_app(tmp_path / "books.txt", ["u1", "u2", "u3"], ["b1", "b2", "b3", "x"])
  b = write_app(tmp_path / "movies.txt", ["u2", "u3", "u4"] if shared else ["v1", "v2", "v3"],
                ["m1", "m2", "x"] if shared else ["m1", "m2", "m3"])
  c = base_config()
  c.data.update(dict(name="interactions", domain="source", data_dir=str(tmp_path / "prepared")))
  c.data.files.update(dict(format="sasrec", path=a, key_scope="shared"))
  c.data.scenario.kind = "cross_app"
  c.data.scenario.target_files.update(dict(format="sasrec", path=b, key_scope="shared"))
  src = pipeline.load_domain(c.data)
  c.data.domain = "target"
  tgt = pipeline.load_domain(c.data)
  overlap = tgt.metadata["statistics"]["overlap"]["source~target"]
  assert overlap == ({"shared_users": 2, "shared_items": 1} if shared else {"shared_users": 0, "shared_items": 0})
  assert src.num_items == 4 and tgt.num_items == 3 and src.num_users == tgt.num_users == 3
  assert tgt.metadata["statistics"]["scenario"]["keys"] == {"source": "raw ids", "target": "raw ids"}


@pytest.mark.parametrize("keys", ["auto", "shared"])
def test_files_numbered_1_to_n_each_share_no_key_unless_declared(tmp_path, keys):
  """The S3Rec release numbers users and items 1..N in every file: Sports' item 3 is not Toys'
  item 3. Their keys are the file's own unless the user declares a shared numbering."""
  sports = tmp_path / "Sports.txt"
  sports.write_text("".join(f"{u} " + " ".join(str(i) for i in range(1, 6)) + "\n" for u in range(1, 5)))
  toys = tmp_path / "Toys.txt"
  toys.write_text("".join(f"{u} " + " ".join(str(i) for i in range(3, 8)) + "\n" for u in range(1, 4)))
  c = base_config()
  c.data.update(dict(name="interactions", domain="target", data_dir=str(tmp_path / "prepared")))
  c.data.files.update(dict(format="s3rec", path=str(sports), key_scope=keys))
  c.data.scenario.kind = "cross_app"
  c.data.scenario.target_files.update(dict(format="s3rec", path=str(toys), key_scope=keys))
  tgt = pipeline.load_domain(c.data)
  stats = tgt.metadata["statistics"]
  if keys == "auto":
    assert stats["overlap"]["source~target"] == {"shared_users": 0, "shared_items": 0}
    assert tgt.item_keys == [f"Toys.txt:{i}" for i in range(3, 8)]  # ids keep their numeric order
    assert stats["scenario"]["keys"]["target"] == "per file (Toys.txt: no key matches another file)"
  else:
    assert stats["overlap"]["source~target"] == {"shared_users": 3, "shared_items": 3}
    assert stats["scenario"]["keys"] == {"source": "raw ids", "target": "raw ids"}
  c.data.domain = "source"
  src_keys = set(pipeline.load_domain(c.data).item_keys)  # transfer maps item rows by these keys
  assert [k for k in tgt.item_keys if k in src_keys] == ([] if keys == "auto" else ["3", "4", "5"])


def test_cross_app_with_movielens_target(tmp_path):
  F.write_ml100k(str(tmp_path / "manual"))
  a = write_app(tmp_path / "books.txt", ["1", "2", "99"], ["b1", "b2", "b3"])
  c = base_config()
  c.data.update(dict(name="interactions", domain="target", data_dir=str(tmp_path / "prepared")))
  c.data.files.update(dict(format="sasrec", path=a, key_scope="shared"))  # the file uses MovieLens user ids
  c.data.movielens.update(dict(manual_dir=str(tmp_path / "manual"), download=False, verify_checksum=False))
  c.data.scenario.update(dict(kind="cross_app", target_name="movielens", target_release="100k"))
  tgt = pipeline.load_domain(c.data)
  assert tgt.num_users == 12 and tgt.metadata["statistics"]["overlap"]["source~target"]["shared_users"] == 2
  assert tgt.metadata["item_features"]["target"]["3"]["title"] == "Amélie (2001)"
  c.data.scenario.target_name = "netflix"
  with pytest.raises(ValueError, match=r"target_name='netflix' is not valid; valid: \['movielens', 'interactions'\]"):
    pipeline.load_domain(c.data)



def test_two_files_of_one_name_cannot_keep_per_file_keys(tmp_path):
  """Per-file keys are made from the file's name: books/ratings.txt and movies/ratings.txt would
  share every key. Refused, naming both files and the ways out."""
  paths = []
  for folder, first in (("books", 1), ("movies", 50)):
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "ratings.txt"
    path.write_text("".join(f"{u} {i}\n" for u in range(1, 4) for i in range(first, first + 5)))
    paths.append(str(path))
  c = base_config()
  c.data.update(dict(name="interactions", domain="target", data_dir=str(tmp_path / "prepared")))
  c.data.files.update(dict(format="sasrec", path=paths[0]))
  c.data.scenario.kind = "cross_app"
  c.data.scenario.target_files.update(dict(format="sasrec", path=paths[1]))
  with pytest.raises(ValueError, match=r"the source and target files are both named 'ratings.txt' .* rename one "
                                       r"file, or declare a shared numbering"):
    pipeline.load_domain(c.data)


def test_the_key_scope_is_set_from_the_command_line(tmp_path):
  """The field was named `keys`, which a ConfigDict's keys() method hid from absl's flag parser
  (`--config.data.files.keys=shared` failed: "flag value must be a string, found <class 'method'>")."""
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  data = tmp_path / "Toys.txt"
  data.write_text("".join(f"{u} {i}\n" for u in range(1, 5) for i in range(1, 6)))  # SASRec's "user item" lines
  proc = subprocess.run([sys.executable, os.path.join(root, "launch.py"), "--config", os.path.join(root, "configs", "sasrec_interactions.py"),
                         f"--config.data.files.path={data}", "--config.data.files.key_scope=everywhere",
                         "--workdir", str(tmp_path / "run")], capture_output=True, text=True, cwd=root, timeout=300,
                        env={**os.environ, "XREC_DATA_DIR": str(tmp_path / "prepared")})
  assert proc.returncode != 0  # the value reached the config: refused by name, with the valid ones
  assert "data.files.key_scope='everywhere' is not valid; valid: ['auto', 'file', 'shared']" in proc.stdout + proc.stderr


def test_loading_a_dataset_does_not_log_its_whole_builder_config(tmp_path, caplog):
  """tfds warns "Using custom data configuration: <the builder config, a few KB>" whenever one of
  xrec's builders is made, i.e. on every load (selection's analysis printed it per candidate)."""
  import logging
  c = base_config()
  c.data.update(dict(data_dir=str(tmp_path)))
  c.data.synthetic.update(dict(num_source_users=20, num_target_users=20, num_source_items=30, num_target_items=30,
                               mean_seq_len=8.0, max_seq_len=12))
  with caplog.at_level(logging.INFO):
    pipeline.load_domain(c.data)
    pipeline.load_domain(c.data)
  assert not [r for r in caplog.records if str(r.msg).startswith("Using custom data configuration")]
