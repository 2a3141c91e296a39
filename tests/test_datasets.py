"""MovieLens releases, prepared TFDS datasets, pipeline integration, configs and the stats command.

Every fixture is made-up data written by tests/test_data_fixtures.py in the
exact GroupLens layouts (separators, headers, latin-1, quoted titles, zips).
"""

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_data_fixtures as F  # noqa: E402

from xrec.defaults import base_config  # noqa: E402
from xrec.data import movielens, pipeline, prepared, stats  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRITERS = {"100k": F.write_ml100k, "1m": F.write_ml1m,
           "20m": lambda root, as_zip: F.write_ml_csv(root, "ml-20m", as_zip),
           "25m": lambda root, as_zip: F.write_ml_csv(root, "ml-25m", as_zip),
           "latest-small": lambda root, as_zip: F.write_ml_csv(root, "ml-latest-small", as_zip)}


def _sequence(table, user):
  rows = np.flatnonzero(table.users == table.user_keys.index(user))
  rows = rows[np.argsort(table.timestamps[rows], kind="stable")]
  return [table.item_keys[i] for i in table.items[rows]], table.ratings[rows]


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
@pytest.mark.parametrize("release", list(movielens.RELEASES))
def test_movielens_release_parses_ratings_and_features(tmp_path, release, as_zip):
  WRITERS[release](str(tmp_path), as_zip=as_zip)
  t = movielens.read_movielens(release, str(tmp_path), download_missing=False, verify_checksum=False)
  assert len(t) == 72 and len(t.user_keys) == 12 and t.has_ratings and t.has_timestamps
  items, ratings = _sequence(t, "1")  # user 1 is written newest first
  assert items == ["2", "5", "8", "1", "4", "7"]
  assert np.all(np.diff(t.timestamps[t.users == 0]) < 0), "file order is kept in the table"
  if release in ("20m", "25m", "latest-small"):
    assert set(_sequence(t, "3")[1]) <= {0.5, 1.5, 2.5, 3.5, 4.5}  # half stars survive
    assert t.item_features["11"] == {"title": "Babylon 5", "year": None, "genres": []}
    assert t.item_features["2"]["tmdb_id"] == "" and t.item_features["1"]["imdb_id"] == "0100001"
    assert t.user_features == {}
  else:
    assert t.user_features["2"]["zip"] == "10001-1234" and t.user_features["11"]["zip"] == "T8H1N"
    assert t.user_features["12"]["zip"] == ""
    if release == "1m":
      assert t.user_features["3"] == {"gender": "F", "age": 35, "occupation": 3, "zip": "14850"}
    else:
      assert t.user_features["3"] == {"gender": "F", "age": 21, "occupation": "other", "zip": "14850"}
      assert t.item_features["267"]["genres"] == ["unknown"] and t.item_features["267"]["year"] is None
  assert t.item_features["3"]["title"] == "Amélie (2001)"  # latin-1 (1m, 100k) / UTF-8 (CSV) decoded
  assert t.item_features["4"]["title"] == "Lord, The (2001)"  # comma inside a quoted CSV title
  assert t.item_features["1"]["genres"] == ["Animation", "Children's", "Comedy"]
  assert t.item_features["5"]["year"] == 1995


def test_movielens_malformed_lines_name_file_and_line(tmp_path):
  lines = ["1::1::5::978300760", "1::2::4::978300761", "1::3::4", "1::4::4::978300763"]
  F.write_ml1m(str(tmp_path), ratings_lines=lines)
  with pytest.raises(ValueError, match=r"ml-1m\.zip:ml-1m/ratings\.dat:3: expected UserID::MovieID"):
    movielens.read_movielens("1m", str(tmp_path), download_missing=False, verify_checksum=False)

  F.write_ml1m(str(tmp_path / "b"), as_zip=False,
               ratings_lines=["1::1::5::978300760", "1::2::five::978300761"])
  with pytest.raises(ValueError, match=r"ratings\.dat:2: rating 'five' is not an integer"):
    movielens.read_movielens("1m", str(tmp_path / "b"), download_missing=False, verify_checksum=False)

  folder = F.write_ml_csv(str(tmp_path / "c"), "ml-20m", as_zip=False)
  with open(os.path.join(folder, "movies.csv"), "a", encoding="utf-8") as f:
    f.write("12,Lord, The (2002),Drama\n")  # an unquoted comma: the 13th line has 4 fields
  with pytest.raises(ValueError, match=r"movies\.csv:13: expected 3 fields movieId,title,genres, got 4"):
    movielens.read_movielens("20m", str(tmp_path / "c"), download_missing=False, verify_checksum=False)

  folder = F.write_ml100k(str(tmp_path / "d"), as_zip=False)
  with open(os.path.join(folder, "u.item"), "a", encoding="latin-1") as f:
    f.write("300|Short (1995)|01-Jan-1995||url|0|1\n")
  with pytest.raises(ValueError, match=r"u\.item:12: expected id\|title.* \(24 .\|.-separated fields\)"):
    movielens.read_movielens("100k", str(tmp_path / "d"), download_missing=False, verify_checksum=False)


def test_missing_movielens_says_which_file_goes_where(tmp_path):
  manual = str(tmp_path / "manual")
  with pytest.raises(FileNotFoundError) as e:
    movielens.read_movielens("1m", manual, download_missing=False)
  msg = str(e.value)
  assert "Put ml-1m.zip (download it from https://files.grouplens.org/datasets/movielens/ml-1m.zip" in msg
  assert f"into {manual}{os.sep}" in msg and os.path.join(manual, "ml-1m", "ratings.dat") in msg
  assert "data.movielens.download=False" in msg


def test_download_verifies_checksum_and_reports_offline(tmp_path, monkeypatch):
  served = F.write_ml1m(str(tmp_path / "server"))
  digest = hashlib.sha256(open(served, "rb").read()).hexdigest()
  monkeypatch.setattr(movielens, "BASE_URL", (tmp_path / "server").as_uri() + "/")
  monkeypatch.setitem(movielens.RELEASES, "1m", movielens.Release("ml-1m", digest, 0, "ratings.dat"))
  manual = str(tmp_path / "manual")
  t = movielens.read_movielens("1m", manual)  # downloads into the manual folder, checks sha256
  assert len(t) == 72 and os.path.isfile(os.path.join(manual, "ml-1m.zip"))
  assert not os.path.exists(os.path.join(manual, "ml-1m.zip.part"))

  monkeypatch.setitem(movielens.RELEASES, "1m", movielens.Release("ml-1m", "0" * 64, 0, "ratings.dat"))
  with pytest.raises(ValueError, match="does not match the published 0000"):
    movielens.read_movielens("1m", manual)
  assert len(movielens.read_movielens("1m", manual, verify_checksum=False)) == 72

  monkeypatch.setattr(movielens, "BASE_URL", (tmp_path / "offline").as_uri() + "/")
  with pytest.raises(FileNotFoundError, match=r"Put ml-1m\.zip .* Download failed: file:"):
    movielens.read_movielens("1m", str(tmp_path / "empty"))


def movielens_config(tmp_path, release="1m"):
  c = base_config()
  c.data.name = "movielens"
  c.data.domain = "main"
  c.data.data_dir = str(tmp_path / "prepared")
  c.data.movielens.update(dict(release=release, manual_dir=str(tmp_path / "manual"), download=False,
                               verify_checksum=False))
  return c


def test_prepared_movielens_loads_through_the_pipeline(tmp_path):
  F.write_ml1m(str(tmp_path / "manual"))
  c = movielens_config(tmp_path)
  domain = pipeline.load_domain(c.data)
  assert domain.num_users == 12 and domain.num_items == 10
  u1 = domain.user_keys.index("1")
  assert [domain.item_keys[i - 1] for i in domain.sequence(u1)] == ["2", "5", "8", "1", "4", "7"]
  rec = domain.source[u1]
  assert np.all(np.diff(rec["timestamps"]) >= 0) and rec["ratings"].dtype == np.float32
  meta = domain.metadata
  assert meta["item_features"]["main"]["4"]["title"] == "Lord, The (2001)"
  assert meta["user_features"]["main"]["11"]["zip"] == "T8H1N"
  s = meta["statistics"]["domains"]["main"]
  assert (s["users"], s["items"], s["interactions"]) == (12, 10, 72)
  assert s["density"] == pytest.approx(72 / 120)

  # same options: the prepared dataset is reused; another option: another dataset
  b1, b2 = pipeline.prepare_builder(c.data), pipeline.prepare_builder(c.data)
  assert b1.data_dir == b2.data_dir
  c.data.preprocess.min_rating = 2.0
  b3 = pipeline.prepare_builder(c.data)
  assert b3.data_dir != b1.data_dir
  assert b3.info.metadata["statistics"]["domains"]["main"]["interactions"] < 72
  shutil.copytree(tmp_path / "manual", tmp_path / "elsewhere")  # where the archive lives is not an option,
  c.data.movielens.manual_dir = str(tmp_path / "elsewhere")  # its content is
  assert prepared.make_builder(c.data).builder_config.name == b3.builder_config.name
  archive = next((tmp_path / "elsewhere").glob("*.zip"))
  with open(archive, "ab") as f:
    f.write(b"\0")  # same name, one byte more: another dataset
  assert prepared.make_builder(c.data).builder_config.name != b3.builder_config.name


def test_cross_region_through_the_pipeline_with_few_shot_target(tmp_path):
  F.write_ml1m(str(tmp_path / "manual"))
  c = movielens_config(tmp_path)
  c.data.scenario.update(dict(kind="user_attribute", attribute="region", source_values=("0", "1", "2", "3", "4"),
                              target_values=("5", "6", "7", "8", "9")))
  c.data.domain = "source"
  src = pipeline.load_domain(c.data)
  c.data.domain = "target"
  tgt = pipeline.load_domain(c.data)
  assert sorted(src.user_keys, key=int) == ["1", "2", "3", "4", "5"]  # zips 0xxxx..4xxxx
  assert sorted(tgt.user_keys, key=int) == ["6", "7", "8", "9", "10"]  # T8H1N and '' are in neither
  assert not set(src.user_keys) & set(tgt.user_keys)
  st = tgt.metadata["statistics"]
  assert st["overlap"]["source~target"]["shared_users"] == 0
  assert st["overlap"]["source~target"]["shared_items"] == len(set(src.item_keys) & set(tgt.item_keys)) > 0
  assert st["scenario"]["users_per_value"]["non_us"] == 1 and st["scenario"]["users_without_side"] == 2
  c.data.user_fraction = 0.4
  few = pipeline.load_domain(c.data)
  train_keys = {few.user_keys[u] for u in few.train_users}
  assert len(train_keys) == 2 and train_keys <= set(tgt.user_keys)
  assert [few.user_keys[u] for u in few.eval_users] == tgt.user_keys  # few-shot limits training only
  c.data.user_fraction = 0.8
  more = pipeline.load_domain(c.data)
  assert train_keys <= {more.user_keys[u] for u in more.train_users}  # nested


def test_interaction_file_loads_through_the_pipeline(tmp_path):
  path = tmp_path / "Beauty.txt"
  path.write_text("".join(f"{u} {i}\n" for u in range(1, 6) for i in range(u, u + 4)))
  c = base_config()
  c.data.name, c.data.domain, c.data.data_dir = "interactions", "main", str(tmp_path / "prepared")
  c.data.files.update(dict(format="sasrec", path=str(path)))
  domain = pipeline.load_domain(c.data)
  # a SASRec-layout file numbers its own users and items: keys are the file's (data.files.key_scope)
  assert domain.num_users == 5 and domain.item_keys == [f"Beauty.txt:{i}" for i in range(1, 9)]
  assert domain.sequence(domain.user_keys.index("Beauty.txt:3")).tolist() == [3, 4, 5, 6]
  before = pipeline.prepare_builder(c.data).data_dir
  path.write_text(path.read_text() + "6 1\n6 2\n6 3\n")  # an edited file is never reused
  assert pipeline.prepare_builder(c.data).data_dir != before
  with pytest.raises(ValueError, match=r"Unknown domain 'source' .* valid: \['main'\]"):
    c.data.domain = "source"
    pipeline.load_domain(c.data)


def test_unknown_dataset_name_lists_valid_ones():
  c = base_config()
  c.data.name = "movielenz"
  with pytest.raises(ValueError, match=r"valid: \['synthetic', 'movielens', 'interactions'\]"):
    pipeline.prepare_builder(c.data)


def _load_config(name, arg=None):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_configs_set_the_published_protocol():
  c = _load_config("sasrec_ml1m")
  assert (c.data.name, c.data.movielens.release, c.data.domain) == ("movielens", "1m", "main")
  assert c.model.max_len == 200 and c.objective.terms == (("full_softmax", 1.0),) and c.eval.mask_history
  assert c.data.preprocess.min_seq_len == 3
  region = _load_config("ml1m_cross_region")
  assert region.data.scenario.kind == "user_attribute" and region.data.scenario.attribute == "region"
  genre = _load_config("ml1m_cross_genre")
  assert genre.data.scenario.kind == "item_attribute" and genre.data.scenario.attribute == "genres"
  for fmt in ("sasrec", "s3rec", "recbole", "amazon2018", "amazon2023", "amazon2023_reviews"):
    files = _load_config("sasrec_interactions", fmt).data.files
    assert files.format in ("sasrec", "s3rec", "recbole", "csv", "jsonl")
  with pytest.raises(ValueError, match="valid:"):
    _load_config("sasrec_interactions", "parquet")


def test_format_statistics_reports_counts_and_overlap():
  st = {"domains": {"source": {"users": 5, "items": 10, "interactions": 30, "density": 0.6, "seq_len_min": 6,
                               "seq_len_max": 6, "seq_len_mean": 6.0, "seq_len_p5_p25_p50_p75_p95": [6] * 5,
                               "preprocess": {"interactions_read": 40, "after_core_filter": 30}}},
        "overlap": {"source~target": {"shared_users": 0, "shared_items": 7}},
        "scenario": {"kind": "user_attribute", "skipped_lines": {"a.csv": {"count": 2, "examples": ["a.csv:3: x"]}}}}
  text = stats.format_statistics(st)
  assert "source" in text and "0.60000" in text and "6/6/6/6/6/6/6 (6.0)" in text
  assert "read 40 -> k-core 30" in text and "overlap source~target: shared users 0, shared items 7" in text
  assert "skipped 2 malformed lines in a.csv, e.g. a.csv:3: x" in text


def test_stats_command_prints_cross_genre_report(tmp_path):
  F.write_ml1m(str(tmp_path / "manual"))
  cmd = [sys.executable, "-m", "xrec.data.stats", "--config", os.path.join(ROOT, "configs", "ml1m_cross_genre.py") + ":first",
         f"--config.data.data_dir={tmp_path / 'prepared'}", f"--config.data.movielens.manual_dir={tmp_path / 'manual'}",
         "--config.data.movielens.download=False", "--config.data.movielens.verify_checksum=False"]
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "overlap source~target: shared users" in out.stdout and "shared items 0" in out.stdout
  assert "xrec_movielens/ml_1m_item_attribute_" in out.stdout
