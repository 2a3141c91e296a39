"""Losses over the item table (the math of the objective terms in xrec/train/objectives.py). All take

  hidden  [batch, len, embed]   sequence encoder output (compute dtype)
  targets [batch, len]          next item ids, 0 = padding (no loss)
  table   [vocab, embed], bias [vocab]   output item table (ids >= num_items + 1 are
                                         sharding padding and never scored)
and return (mean loss over non-padded positions, number of such positions).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from xrec.models.common import score_items

_NEG = -1e9


def _valid_vocab(vocab_size: int, num_items: int):
  ids = jnp.arange(vocab_size)
  return (ids >= 1) & (ids <= num_items)


def _target_logit(hidden, ids, table, bias):
  """Logit of item `ids` [batch, len] at each position, without materialising all logits."""
  return (jnp.einsum("bld,bld->bl", hidden, table[ids].astype(hidden.dtype),
                     preferred_element_type=jnp.float32) + bias[ids].astype(jnp.float32))


def _label_logit(logits, targets, vocab_shards: int = 1):
  """logits [batch, len, vocab] at `targets` [batch, len]. On one vocab shard, a gather along the
  vocab axis (its gradient a scatter into the logits' gradient): the head's forward and backward
  take 0.80 s instead of 0.99 s with the select below at the MovieLens-1M shape on XLA:CPU
  (experiments/bench/README.md, "The step at parity"), and the whole step reaches the plain
  Flax step. Over several vocab shards, a select and a sum over the vocab axis, which keeps the
  sharded logits sharded (a gather along a sharded axis would gather the logits) and whose
  gradient is a select. (Gathering the target's *table row* instead of its logit made the backward
  a scatter-add into the whole item table: 1.6x slower.)"""
  if vocab_shards == 1:
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  hit = jnp.arange(logits.shape[-1])[None, None, :] == targets[..., None]
  return jnp.where(hit, logits, 0.0).sum(-1)


def _logsumexp(x):
  """Stable log-sum-exp over the last axis (cheaper than jax.nn.logsumexp's inf handling)."""
  m = jax.lax.stop_gradient(x.max(-1, keepdims=True))
  return jnp.log(jnp.exp(x - m).sum(-1)) + m[..., 0]


def _mean(per_position, weights):
  n = weights.sum()
  return (per_position * weights).sum() / jnp.maximum(n, 1.0), n


def full_softmax(hidden, targets, table, bias, *, num_items, rng=None, vocab_shards: int = 1, **_):
  """Cross-entropy over the whole catalogue (Klenitskiy & Vasilev, 2023); vocab_shards: the devices
  the item table (and so the logits' vocab axis) is split over."""
  del rng
  # padding / sharding-padding ids are masked through the bias, fused into the matmul epilogue
  masked_bias = jnp.where(_valid_vocab(table.shape[0], num_items), bias.astype(jnp.float32), _NEG)
  logits = score_items(hidden, table, masked_bias)  # [batch, len, vocab]
  return _mean(_logsumexp(logits) - _label_logit(logits, targets, vocab_shards), (targets > 0).astype(jnp.float32))


def _chunk_layout(vocab: int, shards: int, chunk_size: int) -> tuple[int, int]:
  """(chunks per shard, chunk width): the vocab splits into `shards` contiguous blocks (as the
  'vocab' sharding splits the table) and each block into equal chunks of at most chunk_size."""
  if vocab % shards:
    raise ValueError(f"chunked softmax: the item table's {vocab} rows do not split into {shards} vocab shards")
  per = vocab // shards
  chunks = -(-per // max(1, min(chunk_size, per)))
  while per % chunks:
    chunks += 1
  return chunks, per // chunks


def _in_chunks(x, shards: int, chunks: int):
  """[vocab, ...] -> [chunks, shards, width, ...]: chunk c holds the c-th slice of every shard's
  block, so a scan over chunks keeps the shard axis (and its device split) in every step."""
  return jnp.swapaxes(x.reshape((shards, chunks, -1) + x.shape[1:]), 0, 1)


def _from_chunks(x):
  """Inverse of _in_chunks: [chunks, shards, width, ...] -> [vocab, ...]."""
  x = jnp.swapaxes(x, 0, 1)
  return x.reshape((-1,) + x.shape[3:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def _chunked_xent(hidden, table, bias, targets, shards, chunk_size):
  return _chunked_xent_fwd(hidden, table, bias, targets, shards, chunk_size)[0]


def _chunk_logits(hidden, table_c, bias_c):
  return (jnp.einsum("nd,scd->nsc", hidden, table_c.astype(hidden.dtype), preferred_element_type=jnp.float32)
          + bias_c.astype(jnp.float32)[None])


def _chunked_xent_fwd(hidden, table, bias, targets, shards, chunk_size):
  """Per-position cross-entropy [n] of hidden [n, embed] against every row of table [vocab, embed]
  (+ bias [vocab], -1e9 where not an item) without the [n, vocab] logits: an online log-sum-exp
  over vocab chunks; the target logit is picked out of the chunk that holds it."""
  chunks, _ = _chunk_layout(table.shape[0], shards, chunk_size)
  ids = _in_chunks(jnp.arange(table.shape[0]), shards, chunks)
  n = hidden.shape[0]

  def body(carry, xs):
    m, s, tgt = carry
    table_c, bias_c, ids_c = xs
    logits = _chunk_logits(hidden, table_c, bias_c)  # [n, shards, width]
    m_new = jnp.maximum(m, logits.max((1, 2)))
    s = s * jnp.exp(m - m_new) + jnp.exp(logits - m_new[:, None, None]).sum((1, 2))
    tgt = tgt + jnp.where(ids_c[None] == targets[:, None, None], logits, 0.0).sum((1, 2))
    return (m_new, s, tgt), None

  init = (jnp.full((n,), -jnp.inf, jnp.float32), jnp.zeros((n,), jnp.float32), jnp.zeros((n,), jnp.float32))
  (m, s, tgt), _ = jax.lax.scan(body, init, (_in_chunks(table, shards, chunks), _in_chunks(bias, shards, chunks), ids))
  lse = jnp.log(s) + m
  return lse - tgt, (hidden, table, bias, targets, lse)


def _chunked_xent_bwd(shards, chunk_size, residuals, g):
  """d loss / d logits = g (softmax - onehot), rebuilt chunk by chunk from the saved log-sum-exp."""
  hidden, table, bias, targets, lse = residuals
  chunks, _ = _chunk_layout(table.shape[0], shards, chunk_size)
  ids = _in_chunks(jnp.arange(table.shape[0]), shards, chunks)
  g = g.astype(jnp.float32)

  def body(d_hidden, xs):
    table_c, bias_c, ids_c = xs
    logits = _chunk_logits(hidden, table_c, bias_c)
    d_logits = g[:, None, None] * (jnp.exp(logits - lse[:, None, None])
                                   - (ids_c[None] == targets[:, None, None]).astype(jnp.float32))
    d_hidden = d_hidden + jnp.einsum("nsc,scd->nd", d_logits, table_c.astype(jnp.float32))
    d_table = jnp.einsum("nsc,nd->scd", d_logits, hidden.astype(jnp.float32))
    return d_hidden, (d_table.astype(table.dtype), d_logits.sum(0).astype(bias.dtype))

  d_hidden, (d_table, d_bias) = jax.lax.scan(
      body, jnp.zeros(hidden.shape, jnp.float32),
      (_in_chunks(table, shards, chunks), _in_chunks(bias, shards, chunks), ids))
  zero_targets = np.zeros(targets.shape, jax.dtypes.float0)
  return d_hidden.astype(hidden.dtype), _from_chunks(d_table), _from_chunks(d_bias), zero_targets


_chunked_xent.defvjp(_chunked_xent_fwd, _chunked_xent_bwd)


def chunked_softmax(hidden, targets, table, bias, *, num_items, rng=None, chunk_size=2048, vocab_shards=1, **_):
  """full_softmax's loss and gradients, computed over the catalogue in chunks of at most
  `chunk_size` items per vocab shard so that neither the forward nor the backward ever holds
  [batch, len, vocab] logits (memory O(batch x len x chunk_size x vocab_shards) per step, for
  million-item catalogues). `vocab_shards` is the number of devices the item table is split over
  on 'vocab' (the trainer passes it): each scan step then works on a slice of every device's block."""
  del rng
  masked_bias = jnp.where(_valid_vocab(table.shape[0], num_items), bias.astype(jnp.float32), _NEG)
  flat_hidden = hidden.reshape(-1, hidden.shape[-1])
  per_position = _chunked_xent(flat_hidden, table, masked_bias, targets.reshape(-1), int(vocab_shards),
                               int(chunk_size))
  return _mean(per_position.reshape(targets.shape), (targets > 0).astype(jnp.float32))


def _draw_negatives(rng, num_negatives: int, num_items: int, sampling_probs=None):
  """`num_negatives` item ids drawn with replacement from `sampling_probs` [vocab] (uniform over
  the real items when None) and their log-probabilities. Inverse-CDF sampling: memory O(vocab),
  never [num_negatives, vocab] (what jax.random.categorical's Gumbel trick allocates, 4 GB for
  1,024 negatives over a million items)."""
  if sampling_probs is None:
    neg = jax.random.randint(rng, (num_negatives,), 1, num_items + 1)
    return neg, jnp.full((num_negatives,), -jnp.log(float(num_items)), jnp.float32)
  probs = sampling_probs.astype(jnp.float32)
  cdf = jnp.cumsum(probs)
  u = jax.random.uniform(rng, (num_negatives,), jnp.float32) * cdf[-1]
  neg = jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, probs.shape[0] - 1)
  # a draw can land on a zero-probability id only through float rounding at the cdf's edges:
  # move it to the last id with mass below it
  neg = jnp.where(probs[neg] > 0, neg, jnp.searchsorted(cdf, cdf[neg], side="left"))
  return neg, jnp.log(jnp.maximum(probs[neg] / cdf[-1], 1e-30))


def sampled_softmax(hidden, targets, table, bias, *, num_items, rng, num_negatives=256,
                    sampling_probs=None, **_):
  """Softmax over the target plus `num_negatives` shared negatives, logQ-corrected.

  Negatives are drawn with replacement from `sampling_probs` [vocab] (uniform
  over real items when None). Each negative logit is corrected by
  -log(num_negatives * q(j)) and negatives equal to the target (accidental
  hits) are dropped, so sum_j exp(logit_j) over the samples is an unbiased
  estimate of the partition function over the other items; the target's own
  logit is left uncorrected. As num_negatives grows the loss tends to the full
  softmax cross-entropy (tested).
  """
  neg, log_q_neg = _draw_negatives(rng, num_negatives, num_items, sampling_probs)
  pos_logit = _target_logit(hidden, targets, table, bias)  # [batch, len]
  neg_logit = score_items(hidden, table[neg], bias[neg])  # [batch, len, neg]
  neg_logit = neg_logit - (log_q_neg + jnp.log(float(num_negatives)))[None, None, :]
  neg_logit = jnp.where(neg[None, None, :] == targets[..., None], _NEG, neg_logit)
  logits = jnp.concatenate([pos_logit[..., None], neg_logit], axis=-1)
  loss = _logsumexp(logits) - pos_logit
  return _mean(loss, (targets > 0).astype(jnp.float32))


def bce_one_negative(hidden, targets, table, bias, *, num_items, rng, **_):
  """Original SASRec loss: BCE on the target vs one uniformly drawn negative per position."""
  # uniform over the num_items - 1 items other than the target: draw from [1, num_items - 1]
  # and shift ids at or above the target up by one
  neg = jax.random.randint(rng, targets.shape, 1, num_items)
  neg = neg + (neg >= targets).astype(neg.dtype)

  loss = (-jax.nn.log_sigmoid(_target_logit(hidden, targets, table, bias))
          - jax.nn.log_sigmoid(-_target_logit(hidden, neg, table, bias)))
  return _mean(loss, (targets > 0).astype(jnp.float32))
