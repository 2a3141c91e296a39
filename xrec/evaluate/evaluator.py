"""Sharded full-ranking evaluation: users in batches over 'data', the catalogue over 'model'."""

from __future__ import annotations

import time

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from xrec.data import pipeline
from xrec.evaluate import metrics
from xrec import sharding


def protocol(eval_cfg, population: dict | None = None) -> dict:
  """What every result states about how it was measured (and on which users)."""
  out = {
      "split": "leave_one_out_by_time",
      "ranking": "full",  # all catalogue items, no sampled negatives
      "mask_history": bool(eval_cfg.mask_history),
      # a target the user already had: ranked, or removed with the history (a miss); metrics.py
      "target_in_history": eval_cfg.target_in_history if eval_cfg.mask_history else "rank",
      "ties": metrics.TIES,
      "ks": list(eval_cfg.ks),
  }
  if eval_cfg.negatives:
    out["sampled_negatives"] = {"n": int(eval_cfg.negatives), "sampling": eval_cfg.negatives_sampling,
                                "seed": int(eval_cfg.negatives_seed), "excluded": "every item of the user",
                                "metrics": metrics.SAMPLED_PREFIX + "<metric>@K"}
  if population is not None:
    out["population"] = dict(population)
  return out


def bucket_step(max_len: int) -> int:
  """The step of the evaluation input widths (every multiple of it up to max_len, and max_len; each
  width a batch needs compiles once per run): 8 for windows up to 64 slots, 16 beyond. On real
  MovieLens-1M, multiples of 16 cut ~14% of the encoder's work left by the former four widths
  max_len / (8, 4, 2, 1) (experiments/bench/README.md)."""
  return 8 if max_len <= 64 else 16


class Evaluator:
  def __init__(self, module, num_items: int, max_len: int, eval_cfg, mesh, param_shardings,
               method_kwargs: dict | None = None, length_buckets: bool = True):
    """method_kwargs: extra arguments of the module's score_last (e.g. {"domain": "source"} for a
    multi-domain model). length_buckets: when the encoder's states do not depend on left padding
    (trims_left_padding), users are evaluated in order of history length and each batch keeps
    only the input slots its longest history needs (rounded up to bucket_step): the same scores
    (up to float rounding: other shapes may sum in another order) for a fraction of the encoder's
    work on short histories."""
    method_kwargs = dict(method_kwargs or {})
    if eval_cfg.batch_size % jax.process_count():
      raise ValueError(f"eval.batch_size={eval_cfg.batch_size} does not divide over the {jax.process_count()} "
                       f"processes; use a multiple of {jax.process_count()}")
    self.length_buckets = bool(length_buckets and getattr(module, "trims_left_padding", False))
    self.eval_cfg, self.mesh, self.num_items, self.max_len = eval_cfg, mesh, num_items, max_len
    ks, mask_history = tuple(eval_cfg.ks), bool(eval_cfg.mask_history)
    exclude_repeats = mask_history and eval_cfg.target_in_history == "exclude"
    scores_sharding = NamedSharding(mesh, P("data", "model"))

    def step(params, batch, candidates):
      scores = module.apply({"params": params}, batch["inputs"], method="score_last", **method_kwargs)
      scores = jax.lax.with_sharding_constraint(scores, scores_sharding)  # [batch, vocab]
      rank = metrics.target_rank(scores, batch["target"], num_items,
                                 batch["history"] if mask_history else None, candidates, exclude_repeats)
      sums = metrics.metric_sums(rank, batch["weight"], ks)
      if "negatives" in batch:  # also ranked against the user's sampled negatives
        sampled = metrics.metric_sums(metrics.sampled_rank(scores, batch["target"], batch["negatives"]),
                                      batch["weight"], ks)
        sums.update({metrics.SAMPLED_PREFIX + k: v for k, v in sampled.items() if k != "count"})
      return sums, rank

    self.batch_step = jax.jit(step, in_shardings=(param_shardings, sharding.batch_sharding(mesh),
                                                  sharding.replicated(mesh)),
                              out_shardings=sharding.replicated(mesh))
    self.vocab_size = int(module.vocab_size)
    self.candidates = None  # [vocab] bool: the items that may be recommended (None: all)

  def _batches(self, domain: pipeline.DomainSequences, split: str):
    """(eval batches, the order of domain.eval_users they visit or None)."""
    order = lengths = None
    if self.length_buckets and not domain.pseudo and domain.cross is None:
      users = np.asarray(domain.eval_users)
      # every input is shorter than its user's whole sequence; +1 keeps one padding slot, which a
      # bidirectional encoder's scoring input (shifted left, mask token appended) drops
      need = np.minimum(domain.lengths[users] + 1, self.max_len)
      order = np.argsort(need, kind="stable")
      step = bucket_step(self.max_len)
      sizes = sorted({min(self.max_len, w) for w in range(step, self.max_len + step, step)})
      size = self.eval_cfg.batch_size
      lengths = [next(s for s in sizes if s >= need[order[i:i + size]].max()) for i in range(0, len(users), size)]
    batches = pipeline.eval_batches(domain, split, self.eval_cfg.batch_size, self.max_len, jax.process_index(),
                                    jax.process_count(), order=order, batch_lengths=lengths,
                                    negatives=self._negatives(domain, split))
    return batches, order

  def _negatives(self, domain: pipeline.DomainSequences, split: str):
    """user -> its sampled negatives (eval.negatives > 0), or None."""
    n = int(self.eval_cfg.negatives)
    if not n:
      return None
    if self.eval_cfg.negatives_sampling == "popularity":  # by training interactions (0: never drawn)
      weights = pipeline.item_counts(domain).astype(np.float64)
    else:
      weights = np.ones(domain.num_items + 1)
    weights[0] = 0.0
    with np.errstate(divide="ignore"):
      log_probs = np.log(weights)
    seed = int(self.eval_cfg.negatives_seed)
    return lambda user: pipeline.sampled_negatives(domain, user, split, n, log_probs, seed)

  def _candidates(self) -> np.ndarray:
    return np.ones(self.vocab_size, bool) if self.candidates is None else np.asarray(self.candidates, bool)

  def warm_up(self, params, domain: pipeline.DomainSequences, split: str = "test") -> None:
    """One batch through the jitted step, untimed, so that a following call's users/s measures
    evaluation and not compilation (a model evaluated only once, e.g. a pruned dense model)."""
    candidates = self._candidates()
    seen = set()
    for batch in self._batches(domain, split)[0]:  # one batch of each input length
      if batch["inputs"].shape[-1] not in seen:
        seen.add(batch["inputs"].shape[-1])
        jax.block_until_ready(self.batch_step(params, sharding.put_batch(batch, self.mesh), candidates))

  def __call__(self, params, domain: pipeline.DomainSequences, split: str, with_ranks: bool = False):
    """Metrics over the domain's evaluation population; with `with_ranks`, also the target's 0-based
    rank per population user (int array, in `domain.eval_users` order): (metrics, ranks). Only the
    items in `self.candidates` (when set: a pruned model's served items) are ranked."""
    candidates = self._candidates()
    start = time.time()
    batches, order = self._batches(domain, split)
    total, ranks = {}, []
    for batch in batches:  # per-batch sums are a few scalars: accumulate on the host in float64
      sums, rank = jax.device_get(self.batch_step(params, sharding.put_batch(batch, self.mesh), candidates))
      for k, v in sums.items():
        total[k] = total.get(k, 0.0) + float(v)
      if with_ranks:
        ranks.append(np.asarray(rank))
    out = metrics.finalize(total)
    out["eval_seconds"] = time.time() - start
    out["users_per_second"] = out["num_users"] / max(out["eval_seconds"], 1e-9)
    if not with_ranks:
      return out
    visited = np.concatenate(ranks)[:len(domain.eval_users)].astype(np.int64)
    if order is None:
      return out, visited
    in_order = np.empty_like(visited)
    in_order[order] = visited
    return out, in_order
