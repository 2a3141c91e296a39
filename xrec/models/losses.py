"""Losses over the item table (the math of the objective terms in xrec/train/objectives.py). All take

  hidden  [batch, len, embed]   sequence encoder output (compute dtype)
  targets [batch, len]          next item ids, 0 = padding (no loss)
  table   [vocab, embed], bias [vocab]   output item table (ids >= num_items + 1 are
                                         sharding padding and never scored)
and return (mean loss over non-padded positions, number of such positions).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from xrec.models.common import score_items

_NEG = -1e9


def _valid_vocab(vocab_size: int, num_items: int):
  ids = jnp.arange(vocab_size)
  return (ids >= 1) & (ids <= num_items)


def _target_logit(hidden, ids, table, bias):
  """Logit of item `ids` [batch, len] at each position, without materialising all logits."""
  return (jnp.einsum("bld,bld->bl", hidden, table[ids].astype(hidden.dtype),
                     preferred_element_type=jnp.float32) + bias[ids].astype(jnp.float32))


def _label_logit(logits, targets):
  """logits [batch, len, vocab] at `targets` [batch, len]: a select and a sum over the vocab axis,
  which keeps a vocab-sharded logits tensor sharded and whose gradient is a select. (Gathering the
  target's table row instead made the backward a scatter-add into the whole item table, which
  made the full-softmax step 1.6x slower on XLA:CPU at the MovieLens-1M shape.)"""
  hit = jnp.arange(logits.shape[-1])[None, None, :] == targets[..., None]
  return jnp.where(hit, logits, 0.0).sum(-1)


def _logsumexp(x):
  """Stable log-sum-exp over the last axis (cheaper than jax.nn.logsumexp's inf handling)."""
  m = jax.lax.stop_gradient(x.max(-1, keepdims=True))
  return jnp.log(jnp.exp(x - m).sum(-1)) + m[..., 0]


def _mean(per_position, weights):
  n = weights.sum()
  return (per_position * weights).sum() / jnp.maximum(n, 1.0), n


def full_softmax(hidden, targets, table, bias, *, num_items, rng=None, **_):
  """Cross-entropy over the whole catalogue (Klenitskiy & Vasilev, 2023)."""
  del rng
  # padding / sharding-padding ids are masked through the bias, fused into the matmul epilogue
  masked_bias = jnp.where(_valid_vocab(table.shape[0], num_items), bias.astype(jnp.float32), _NEG)
  logits = score_items(hidden, table, masked_bias)  # [batch, len, vocab]
  return _mean(_logsumexp(logits) - _label_logit(logits, targets), (targets > 0).astype(jnp.float32))


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
  vocab = table.shape[0]
  if sampling_probs is None:
    sampling_probs = _valid_vocab(vocab, num_items).astype(jnp.float32) / num_items
  log_q = jnp.log(jnp.maximum(sampling_probs, 1e-30))
  neg = jax.random.categorical(rng, log_q, shape=(num_negatives,))  # [neg]
  pos_logit = _target_logit(hidden, targets, table, bias)  # [batch, len]
  neg_logit = score_items(hidden, table[neg], bias[neg])  # [batch, len, neg]
  neg_logit = neg_logit - (log_q[neg] + jnp.log(float(num_negatives)))[None, None, :]
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
