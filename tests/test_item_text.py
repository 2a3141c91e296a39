"""Item text (issue 14): the synthetic generator's topic words, text from the features real sources
store (MovieLens titles and genres, S3Rec attributes, metadata files), and the missing-text policy."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_data_fixtures as F  # noqa: E402

from xrec.defaults import base_config  # noqa: E402
from xrec.data import pipeline, synthetic, text  # noqa: E402

SMALL = dict(num_source_users=60, num_target_users=50, num_source_items=80, num_target_items=70,
             mean_seq_len=8.0, max_seq_len=20)


def _stem(word):
  return word.split("-")[0]


def test_synthetic_items_have_topic_words_one_text_per_item_and_unchanged_sequences():
  spec = synthetic.SyntheticSpec.for_scenario("cross_app", **SMALL, item_overlap=0.5)
  data = synthetic.generate(spec)
  src, tgt = data["source"], data["target"]
  assert len(src.item_text) == 80 and len(tgt.item_text) == 70
  assert all(len(t.split()) == spec.text_words for t in src.item_text + tgt.item_text)
  shared = set(src.item_keys) & set(tgt.item_keys)
  assert len(shared) == 35
  for key in shared:  # an item in both domains has one text
    assert src.item_text[src.item_keys.index(key)] == tgt.item_text[tgt.item_keys.index(key)]
  # the text knobs draw from their own stream: sequences do not move with them
  quiet = synthetic.generate(synthetic.SyntheticSpec.for_scenario("cross_app", **SMALL, item_overlap=0.5,
                                                                  text_signal=0.0, text_words=3))
  assert all(np.array_equal(a, b) for a, b in zip(quiet["target"].sequences, tgt.sequences))
  # signal 1: every word of an item names one topic; signal 0: words from random topics
  pure = synthetic.generate(synthetic.SyntheticSpec.for_scenario("cross_app", **SMALL, text_signal=1.0))
  assert all(len({_stem(w) for w in t.split()}) == 1 for t in pure["source"].item_text)
  mixed = [len({_stem(w) for w in t.split()}) for t in quiet["source"].item_text]
  assert np.mean(mixed) > 2.5  # 3 words from 20 topics: mostly distinct
  # items whose latents are near one topic share that topic's stem (text carries the item's topic)
  stems = {}
  for t in pure["source"].item_text:
    stems.setdefault(_stem(t.split()[0]), 0)
    stems[_stem(t.split()[0])] += 1
  assert 1 < len(stems) <= spec.num_topics
  with pytest.raises(ValueError, match="text_signal must be in"):
    synthetic.SyntheticSpec(text_signal=1.5)


def test_the_synthetic_dataset_stores_item_text_and_the_pipeline_reads_it(tmp_path):
  c = base_config()
  c.data.data_dir = str(tmp_path)
  c.data.synthetic.update(SMALL)
  c.data.domain = "target"
  domain = pipeline.load_domain(c.data)
  texts, report = text.item_text(domain.item_keys, domain.metadata["item_features"]["target"], c.data.text)
  assert len(texts) == domain.num_items + 1 and texts[0] == ""
  assert report == {"fields": ["text"], "items": 70, "without_text": 0, "filled_from_attributes": 0, "empty": 0,
                    "missing_policy": "empty", "examples_without_text": []}
  assert texts[1] == synthetic.generate(synthetic.SyntheticSpec.for_scenario("cross_region", **SMALL)
                                        )["target"].item_text[0]


def test_movielens_titles_and_genres_become_item_text(tmp_path):
  F.write_ml1m(str(tmp_path / "manual"))
  c = base_config()
  c.data.name, c.data.domain, c.data.data_dir = "movielens", "main", str(tmp_path / "prepared")
  c.data.movielens.update(dict(release="1m", manual_dir=str(tmp_path / "manual"), download=False,
                               verify_checksum=False))
  domain = pipeline.load_domain(c.data)
  features = domain.metadata["item_features"]["main"]
  texts, report = text.item_text(domain.item_keys, features, c.data.text)
  by_key = dict(zip(domain.item_keys, texts[1:]))
  assert by_key["1"] == "Toy Story (1995); genres: Animation, Children's, Comedy"
  assert by_key["3"] == "Amélie (2001); genres: Comedy, Romance"  # latin-1 in the file
  assert report["fields"] == ["title", "genres"] and report["without_text"] == 0
  c.data.text.fields = ("genres",)
  assert dict(zip(domain.item_keys, text.item_text(domain.item_keys, features, c.data.text)[0][1:]))["4"] == \
      "genres: Drama"
  c.data.text.fields = ("description",)
  with pytest.raises(ValueError, match=r"data.text.fields names \['description'\], which no item .* has; its "
                                       r"item features: \['genres', 'title', 'year'\]"):
    text.item_text(domain.item_keys, features, c.data.text, "movielens-1m")


def test_items_without_text_follow_the_policy_and_are_counted():
  keys = ["a", "b", "c"]
  features = {"a": {"title": "Red shoes", "brand": "Acme"}, "b": {"brand": "Bolt", "price": 3},
              "c": {}}
  cfg = {"fields": ("title",), "missing": "empty"}
  texts, report = text.item_text(keys, features, cfg)
  assert texts == ["", "Red shoes", "", ""]
  assert (report["without_text"], report["empty"], report["examples_without_text"]) == (2, 2, ["b", "c"])
  texts, report = text.item_text(keys, features, {**cfg, "missing": "attributes"})
  assert texts == ["", "Red shoes", "brand: Bolt; price: 3", ""]
  assert (report["without_text"], report["filled_from_attributes"], report["empty"]) == (2, 1, 1)
  with pytest.raises(ValueError, match=r"item 'b' of the dataset has no text in the fields \['title'\]"):
    text.item_text(keys, features, {**cfg, "missing": "error"})
  with pytest.raises(ValueError, match=r"data.text.missing='skip' is not valid; valid: \['empty', 'attributes'"):
    text.item_text(keys, features, {**cfg, "missing": "skip"})
  # a catalogue where no item has any text: refused (a text model would see one vector for all)
  with pytest.raises(ValueError, match=r"no item of books has a text: its item features are \['price'\]"):
    text.item_text(["a", "b"], {"a": {"price": 1}}, {"fields": (), "missing": "empty"}, "books")
  # S3Rec attribute lists and Amazon-style metadata join in the default field order
  texts, _ = text.item_text(["x"], {"x": {"description": "Soft.", "categories": ["Beauty", "Skin"],
                                          "title": "Cream", "attributes": ["12", "40"]}}, {})
  assert texts[1] == "Cream; categories: Beauty, Skin; attributes: 12, 40; description: Soft."
  assert text.text_sha(["", "a"]) != text.text_sha(["", "b"])
  json.dumps(report)  # the report is stored with results


def test_s3rec_item2attributes_become_item_text_through_the_pipeline(tmp_path):
  (tmp_path / "Beauty.txt").write_text("1 1 2 3 4\n2 2 3 4 5\n3 1 3 5 6\n")
  (tmp_path / "Beauty_item2attributes.json").write_text(json.dumps({"1": [10, 11], "2": [12], "3": [], "5": [13]}))
  c = base_config()
  c.data.name, c.data.domain, c.data.data_dir = "interactions", "main", str(tmp_path / "prepared")
  c.data.files.update(dict(format="s3rec", path=str(tmp_path / "Beauty.txt"),
                           item_attributes_path=str(tmp_path / "Beauty_item2attributes.json")))
  domain = pipeline.load_domain(c.data)
  texts, report = text.item_text(domain.item_keys, domain.metadata["item_features"]["main"], c.data.text)
  by_key = {k.removeprefix("Beauty.txt:"): t for k, t in zip(domain.item_keys, texts[1:])}  # per-file keys
  assert by_key == {"1": "attributes: 10, 11", "2": "attributes: 12", "3": "", "4": "", "5": "attributes: 13",
                    "6": ""}
  assert report["without_text"] == 3 and report["examples_without_text"] == [f"Beauty.txt:{i}" for i in (3, 4, 6)]


def test_several_domains_join_into_one_for_pretraining_on_several_sources(tmp_path):
  """data.domain='source+target': both domains' users (keys prefixed by domain) over the union of
  their catalogues by raw key, with every item's text; e.g. a text model pretrained on several
  source domains at once."""
  c = base_config()
  c.data.data_dir = str(tmp_path)
  c.data.synthetic.update(dict(SMALL, scenario="cross_app", item_overlap=0.5))
  parts = {}
  for name in ("source", "target"):
    c.data.domain = name
    parts[name] = pipeline.load_domain(c.data)
  c.data.domain = "source+target"
  both = pipeline.load_domain(c.data)
  src, tgt = parts["source"], parts["target"]
  assert both.num_users == src.num_users + tgt.num_users
  assert both.num_items == len(set(src.item_keys) | set(tgt.item_keys)) == 80 + 35
  assert both.item_keys[:80] == src.item_keys
  u = both.user_keys.index("target:" + tgt.user_keys[3])
  assert [both.item_keys[i - 1] for i in both.sequence(u)] == [tgt.item_keys[i - 1] for i in tgt.sequence(3)]
  texts, report = text.item_text(both.item_keys, both.metadata["item_features"]["source+target"], c.data.text)
  assert report["without_text"] == 0 and len(texts) == 116
  with pytest.raises(ValueError, match=r"Unknown domain 'source\+elsewhere' .*valid: \['source', 'target'\]"):
    c.data.domain = "source+elsewhere"
    pipeline.load_domain(c.data)
