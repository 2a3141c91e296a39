"""A run's training batch streams (the data side of the training recipe, xrec/train/loop.py):
`train_streams` gives "target", the target's training users (with data.augment's views when the
objective contrasts them), and "source", the source domain's every user in the target's item ids,
when an objective term reads it. pipeline.pack_streams then packs them for the step budget and
pipeline.iterate_streams reads them.

Every function takes the config piece it needs (the data piece, xrec/config.py: RunSpec.data),
never the whole configuration.
"""

from __future__ import annotations

import copy
import logging

import jax

from xrec.data import augment, pipeline

log = logging.getLogger("xrec")


def train_streams(domain: pipeline.DomainSequences, data_cfg, batch_size: int, max_len: int, seed: int, *,
                  mask_id: int = 0, views: tuple[str, ...] = (), source: tuple[str, ...] = ()) -> dict:
  """{stream name: pipeline.TrainBatches}. mask_id: the mask token an augmenter writes (0: the
  model has none); views: the objective terms that contrast two augmented views (they need
  data.augment.ops); source: the objective terms that read the source stream (data.source_domain;
  () builds none)."""
  augmenter = augment.from_config(data_cfg.augment, mask_id, (domain.sequence(u)[:-2] for u in domain.train_users),
                                  domain.num_items)
  if views and augmenter is None:
    raise ValueError(f"objective terms {list(views)} contrast augmented views: set data.augment.ops "
                     f"(valid: {list(augment.OPS)})")
  target = pipeline.TrainBatches(domain, batch_size, max_len, seed, jax.process_index(), jax.process_count(),
                                 augmenter, data_cfg.augment.prob if augmenter else 0.0, bool(views))
  streams = {"target": target}
  if source:
    source_cfg = copy.deepcopy(data_cfg)  # the source domain's every user, in the target's item ids
    with source_cfg.unlocked():
      source_cfg.domain, source_cfg.user_fraction, source_cfg.eval_population = data_cfg.source_domain, 1.0, "all"
    try:
      other = pipeline.remap(pipeline.load_domain(source_cfg), domain.item_keys)
    except pipeline.NoSharedItems as e:
      raise ValueError(
          f"objective terms {list(source)} train on the source domain {data_cfg.source_domain!r} in the target's "
          f"item ids (its items the target's catalogue lacks are dropped), and it shares too few items with the "
          f"target: {e}. These terms need domains that share items; with disjoint catalogues use terms (a "
          "strategy) that do not read the source stream") from e
    log.info("source stream: domain %r, %d users, %.1f%% of its interactions on the target's items",
             other.name, other.num_users, 100 * other.metadata["remap"]["interactions_kept"])
    streams["source"] = pipeline.TrainBatches(other, batch_size, max_len, seed + 7919, jax.process_index(),
                                              jax.process_count())
  return streams
