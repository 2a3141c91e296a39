"""TFDS builders (array_record, no TensorFlow) for real sources: MovieLens and interaction files.

Records follow xrec's layout (xrec/data/builders.py): one per (domain, user) with
`user_key`, `items` (int64 [len], 1-based ids into the domain's vocabulary) and
`timestamps` (int64 [len], seconds, non-decreasing), plus
  ratings: float32 [len]   the source's ratings (NaN where the source has none)
One split per domain: `main` for a single-domain dataset (TFDS reserves `all`),
`source` / `target` for a scenario.

Metadata (saved as metadata.json next to the records, loaded with the builder):
  item_keys[domain]      raw item keys, id i -> item_keys[domain][i - 1]
  statistics             {"domains": {name: counts, density, seq-len percentiles, preprocessing
                          counts}, "overlap": shared users/items by raw key, "scenario": split report
                          and skipped malformed lines}
  user_features[domain]  raw user key -> features the source has (MovieLens 100k/1m: gender, age,
                          occupation, zip)
  item_features[domain]  raw item key -> features (MovieLens: title, year, genres; attribute files)
  options                every option the dataset was prepared with

The builder config's name carries a hash of every option and of the input files'
content (xrec/data/fingerprint.py), so changed options or edited files never
reuse a dataset prepared from other ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os

import numpy as np
import tensorflow_datasets as tfds

from xrec.data import builders, fingerprint, scenarios


def record_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      **dict(builders.sequence_features().items()),
      "ratings": tfds.features.Tensor(shape=(None,), dtype=np.float32),
  })


@dataclasses.dataclass(eq=False)
class PreparedBuilderConfig(tfds.core.BuilderConfig):
  options_json: str = "{}"  # hashed into the name: what the data is
  runtime_json: str = "{}"  # not hashed: where raw files are found (manual_dir, download)


def _plain(value):
  """ConfigDict / tuples -> JSON-ready dicts and lists."""
  if hasattr(value, "to_dict"):
    value = value.to_dict()
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  return value


def _files_source(files_cfg) -> dict:
  files = _plain(files_cfg)
  files["name"] = "interactions"
  if "key_scope" in files:  # under its old name (data.files.keys), so that datasets prepared before the
    files["keys"] = files.pop("key_scope")  # rename keep the name their options were hashed to
  return files


def options_from_config(data_cfg) -> tuple[dict, dict]:
  """(options that define the data, runtime options) from `config.data`."""
  name = data_cfg.name
  if name == "movielens":
    source = {"name": "movielens", "release": data_cfg.movielens.release}
  elif name == "interactions":
    source = _files_source(data_cfg.files)
  else:
    raise ValueError(f"Unknown real source {name!r}; valid: {list(scenarios.SOURCE_NAMES)}")
  scenario = _plain(data_cfg.scenario)
  kind = scenario["kind"]
  options = {"source": source, "preprocess": _plain(data_cfg.preprocess),
             "scenario": {k: scenario[k] for k in ("kind", "attribute", "source_values", "target_values",
                                                   "multi_value_rule")}}
  if kind == "cross_app":
    target_name = scenario["target_name"]
    if target_name == "movielens":
      options["target"] = {"name": "movielens", "release": scenario["target_release"]}
    elif target_name == "interactions":
      options["target"] = _files_source(data_cfg.scenario.target_files)
    else:
      raise ValueError(f"data.scenario.target_name={target_name!r} is not valid; valid: {list(scenarios.SOURCE_NAMES)}")
  # the content of every input file (not its size or time): an edited file is another dataset
  options["input_sha256"] = fingerprint.digests(data_cfg)
  data_dir = builders.data_dir_of(data_cfg)
  runtime = {"manual_dir": data_cfg.movielens.manual_dir or os.path.join(data_dir, "manual"),
             "download": bool(data_cfg.movielens.download),
             "verify_checksum": bool(data_cfg.movielens.verify_checksum)}
  return options, runtime


def prepared_config(options: dict, runtime: dict) -> PreparedBuilderConfig:
  """A config named `<source>[_<scenario>]_<hash of options>`."""
  options_json = json.dumps(options, sort_keys=True)
  digest = hashlib.sha256(options_json.encode()).hexdigest()[:12]
  source = options["source"]
  prefix = ("ml_" + source["release"]) if source["name"] == "movielens" else source["format"]
  kind = options["scenario"]["kind"]
  if kind != "none":
    prefix += "_" + kind
  name = "".join(c if c.isalnum() else "_" for c in f"{prefix}_{digest}".lower())
  return PreparedBuilderConfig(name=name, description=f"xrec real data: {options_json}",
                               options_json=options_json, runtime_json=json.dumps(runtime, sort_keys=True))


class _PreparedBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Reads the source(s), splits by scenario, preprocesses, writes one split per domain."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=__doc__, features=record_features(),
                                 metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager):
    del dl_manager  # downloads are plain urllib into the manual folder (xrec/data/movielens.py)
    options = json.loads(self.builder_config.options_json)
    runtime = json.loads(self.builder_config.runtime_json)
    domains, report = scenarios.build_domains(options, runtime)
    for name, d in domains.items():
      if not d.user_keys:
        raise ValueError(f"{self.builder_config.name}: domain {name!r} has no users left after preprocessing "
                         f"({d.report})")
    meta = self.info.metadata
    meta["item_keys"] = {name: d.item_keys for name, d in domains.items()}
    meta["statistics"] = {
        "domains": {name: scenarios.domain_statistics(d) for name, d in domains.items()},
        "overlap": builders.overlap_statistics(domains),
        "scenario": report,
    }
    meta["user_features"] = {name: d.user_features for name, d in domains.items()}
    meta["item_features"] = {name: d.item_features for name, d in domains.items()}
    meta["options"] = options
    return {name: self._generate_examples(d) for name, d in domains.items()}

  def _generate_examples(self, domain):
    for u, key in enumerate(domain.user_keys):
      yield u, {"user_key": key, "items": domain.sequences[u].astype(np.int64),
                "timestamps": domain.timestamps[u].astype(np.int64),
                "ratings": domain.ratings[u].astype(np.float32)}


class XrecMovielens(_PreparedBuilder):
  """MovieLens releases (100k, 1m, 20m, 25m, latest-small), optionally split by scenario."""


class XrecInteractions(_PreparedBuilder):
  """Interaction files in a published format (sasrec, s3rec, recbole, csv, jsonl)."""


BUILDERS = {"movielens": XrecMovielens, "interactions": XrecInteractions}


def make_builder(data_cfg):
  """The (unprepared) builder for `config.data` with name movielens | interactions."""
  options, runtime = options_from_config(data_cfg)
  return BUILDERS[data_cfg.name](config=prepared_config(options, runtime),
                                 data_dir=builders.data_dir_of(data_cfg))
