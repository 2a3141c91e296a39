"""TFDS builders (array_record, no TensorFlow) for xrec's sequence datasets.

Every xrec dataset has the same record layout, one record per (domain, user):

  user_key:   str            raw user key, stable across domains
  items:      int64 [len]    1-based ids into the domain's item vocabulary (0 = padding)
  timestamps: int64 [len]    seconds, non-decreasing (chronological order)

One split per domain (`source`, `target`, ...). The item vocabulary of each
domain (raw item keys, id i -> keys[i - 1]) and dataset statistics are stored
in the dataset's metadata, so transfer can map items across domains by key.
"""

from __future__ import annotations

import dataclasses
import logging
import os

import numpy as np
import tensorflow_datasets as tfds

from xrec.data import synthetic


class _QuietConfigs(logging.Filter):
  """tfds warns "Using custom data configuration: <the whole builder config>" (a few KB) each time
  one of xrec's builders is made, i.e. on every dataset load: expected here, so dropped."""

  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


logging.getLogger("absl").addFilter(_QuietConfigs())

DEFAULT_DATA_DIR = os.path.join(os.path.expanduser("~"), ".cache", "xrec", "datasets")


def data_dir_of(data_cfg) -> str:
  """Where prepared datasets live: data.data_dir, else $XREC_DATA_DIR, else ~/.cache/xrec/datasets."""
  return data_cfg.get("data_dir") or os.environ.get("XREC_DATA_DIR") or DEFAULT_DATA_DIR


def sequence_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      "user_key": tfds.features.Text(),
      "items": tfds.features.Tensor(shape=(None,), dtype=np.int64),
      "timestamps": tfds.features.Tensor(shape=(None,), dtype=np.int64),
  })


def domain_statistics(sequences) -> dict:
  lengths = np.array([len(q) for q in sequences], np.int64)
  if len(lengths) == 0:
    return {"users": 0, "interactions": 0}
  pct = np.percentile(lengths, [5, 25, 50, 75, 95]).tolist()
  return {
      "users": int(len(lengths)),
      "interactions": int(lengths.sum()),
      "seq_len_min": int(lengths.min()),
      "seq_len_max": int(lengths.max()),
      "seq_len_mean": float(lengths.mean()),
      "seq_len_p5_p25_p50_p75_p95": pct,
  }


def overlap_statistics(domains: dict) -> dict:
  """Users / items shared between the first domain and each other, by raw key."""
  names = list(domains)
  out = {}
  for other in names[1:]:
    a, b = domains[names[0]], domains[other]
    out[f"{names[0]}~{other}"] = {
        "shared_users": len(set(a.user_keys) & set(b.user_keys)),
        "shared_items": len(set(a.item_keys) & set(b.item_keys)),
    }
  return out


@dataclasses.dataclass(eq=False)
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
  spec: synthetic.SyntheticSpec = synthetic.SyntheticSpec()


def synthetic_config(scenario: str, **knobs) -> SyntheticBuilderConfig:
  """A builder config for `scenario` with generator knobs overridden.

  The config name carries a hash of every knob, so changed knobs never reuse
  a dataset prepared with other ones.
  """
  spec = synthetic.SyntheticSpec.for_scenario(scenario, **knobs)
  return SyntheticBuilderConfig(
      name=f"{scenario}_{spec.fingerprint()}",
      description=f"Synthetic {scenario} scenario: {spec}",
      spec=spec,
  )


class SyntheticXdomain(tfds.core.GeneratorBasedBuilder):
  """Built-in synthetic cross-domain data (see xrec/data/synthetic.py)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      SyntheticBuilderConfig(name=name, description=f"Synthetic {name} scenario (default knobs).",
                             spec=synthetic.SyntheticSpec.for_scenario(name))
      for name in synthetic.SCENARIOS
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=sequence_features(),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    domains = synthetic.generate(self.builder_config.spec)
    meta = self.info.metadata
    meta["item_keys"] = {name: d.item_keys for name, d in domains.items()}
    meta["statistics"] = {
        "domains": {name: {**domain_statistics(d.sequences), "items": len(d.item_keys)}
                    for name, d in domains.items()},
        "overlap": overlap_statistics(domains),
    }
    meta["spec"] = dataclasses.asdict(self.builder_config.spec)
    meta["item_features"] = {name: {k: {"text": t} for k, t in zip(d.item_keys, d.item_text)}
                             for name, d in domains.items()}
    return {name: self._generate_examples(d) for name, d in domains.items()}

  def _generate_examples(self, domain: synthetic.DomainData):
    for u, (key, seq, ts) in enumerate(zip(domain.user_keys, domain.sequences, domain.timestamps)):
      yield u, {"user_key": key, "items": seq.astype(np.int64), "timestamps": ts.astype(np.int64)}
