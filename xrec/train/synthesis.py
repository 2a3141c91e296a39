"""Synthesis of pseudo-interactions for short target sequences (after ASReP, Liu et al., 2021).

    pseudo, report = generate(module, params, generator_keys, domain, cfg)

A generator (any finished run's encoder, on any item vocabulary: items move by raw key) lengthens
each training user's training part that has fewer than `cfg.min_len` items by up to
`cfg.num_items` items, one at a time, greedily: the generator's most probable item among the
target's items the user has not interacted with, kept only while its probability (softmax over
those candidates) is >= `cfg.confidence`; the first rejection ends that user's synthesis.

  backward  the generator was trained on time-reversed sequences (data.reverse=True): fed the
            user's items newest-first, its "next" item is the one before the oldest; the items
            are prepended (ASReP's pseudo-prior items)
  forward   the generator continues the training part; the items are appended after it

Deterministic (greedy, no sampling): the same generator and data give the same items. The result
maps user index -> (items before, items after), in the target's ids (xrec/data/pipeline.py
DomainSequences.pseudo).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from xrec.data import pipeline

DIRECTIONS = ("backward", "forward")
BATCH = 256


def check(cfg) -> None:
  if cfg.direction not in DIRECTIONS:
    raise ValueError(f"Unknown data.synthesis.direction {cfg.direction!r}; valid: {list(DIRECTIONS)}")
  if int(cfg.num_items) < 0 or int(cfg.min_len) < 1:
    raise ValueError(f"data.synthesis needs num_items >= 0 and min_len >= 1; got num_items={cfg.num_items!r}, "
                     f"min_len={cfg.min_len!r}")
  if not 0.0 <= float(cfg.confidence) < 1.0:
    raise ValueError(f"data.synthesis.confidence={cfg.confidence!r} must be in [0, 1)")


def generate(module, params, generator_keys: list[str], domain: pipeline.DomainSequences, cfg):
  """(pseudo: {user: (before, after)}, report) for the domain's short training users (module doc)."""
  check(cfg)
  position = {key: i + 1 for i, key in enumerate(generator_keys)}
  to_generator = np.zeros(domain.num_items + 1, np.int64)  # target id -> generator id (0: unknown)
  to_target = np.zeros(module.vocab_size, np.int64)  # generator id -> target id (0: not a target item)
  for i, key in enumerate(domain.item_keys):
    g = position.get(key, 0)
    to_generator[i + 1] = g
    if g:
      to_target[g] = i + 1
  if not to_target.any():
    raise ValueError("data.synthesis: the generator knows none of the target's items (matched by raw key); "
                     "use a generator trained on this catalogue or one that shares items with it")
  users = [int(u) for u in domain.train_users if len(domain.sequence(u)) - 2 < int(cfg.min_len)]
  max_len = int(module.max_len)
  candidate = jnp.asarray(to_target > 0)

  @jax.jit
  def step(x, seen):
    scores = module.apply({"params": params}, x, method="score_last").astype(jnp.float32)
    scores = jnp.where(candidate[None, :] & ~seen, scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    best = jnp.argmax(probs, axis=-1)
    return best, jnp.take_along_axis(probs, best[:, None], axis=-1)[:, 0]

  pseudo, confidences = {}, []
  for start in range(0, len(users), BATCH):
    chunk = users[start:start + BATCH]
    grown = {u: [] for u in chunk}
    active = list(chunk)
    for _ in range(int(cfg.num_items)):
      if not active:
        break
      rows, seen = [], np.zeros((BATCH, module.vocab_size), bool)
      for r, u in enumerate(active):
        train = domain.sequence(u)[:-2]
        if cfg.direction == "backward":  # newest first, the generated (older) items last
          seq = np.concatenate([train[::-1], np.asarray(grown[u], np.int64)])
        else:
          seq = np.concatenate([train, np.asarray(grown[u], np.int64)])
        ids = to_generator[seq]
        rows.append(pipeline.right_align(ids[ids > 0], max_len))
        seen[r, ids] = True  # never an item of the training part or one already generated
      seen[:, 0] = True
      x = np.zeros((BATCH, max_len), np.int32)
      x[:len(rows)] = np.stack(rows)
      best, prob = (np.asarray(v) for v in step(jnp.asarray(x), jnp.asarray(seen)))
      still = []
      for r, u in enumerate(active):
        if prob[r] >= float(cfg.confidence) and np.isfinite(prob[r]):
          grown[u].append(int(to_target[best[r]]))
          confidences.append(float(prob[r]))
          still.append(u)
      active = still
    for u, items in grown.items():
      if items:
        items = np.asarray(items, np.int64)
        pseudo[u] = (items[::-1], np.zeros(0, np.int64)) if cfg.direction == "backward" else (np.zeros(0, np.int64), items)
  report = {"direction": cfg.direction, "num_items": int(cfg.num_items), "min_len": int(cfg.min_len),
            "confidence": float(cfg.confidence), "short_users": len(users), "users_lengthened": len(pseudo),
            "items_added": int(sum(len(b) + len(a) for b, a in pseudo.values())),
            "mean_confidence": float(np.mean(confidences)) if confidences else None}
  return pseudo, report
