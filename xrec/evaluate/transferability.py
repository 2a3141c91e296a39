"""Transferability estimates: how well a pretrained encoder's frozen sequence representations suit
a target, computed without fine-tuning (issue 13). Each takes plain arrays (representations
[n, d] float, next-item labels [n] int) so any encoder's `last_states` can feed it.

  linear_cka(x, y)                 similarity of two representations of the same sequences
  label_cka(features, labels)      alignment of the representations with the next-item labels
  mmd_rbf(x, y)                    distance between the source's and the target's representations
  log_me(features, labels)         evidence of a Bayesian linear model of the labels (LogME)
  linear_probe(train, valid, ...)  a softmax probe on frozen features, scored on held-out examples
  kendall_tau(a, b)                how well an estimate ranks candidates like their fine-tuned results
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax


def _centred(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return x - x.mean(axis=0, keepdims=True)


def linear_cka(x, y) -> float:
  """Linear centred kernel alignment (Kornblith et al., "Similarity of Neural Network
  Representations Revisited", ICML 2019, eq. 5): ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on
  column-centred x [n, d1] and y [n, d2] (the same n examples). 1 for representations equal up to
  an orthogonal transform and an isotropic scale; near 0 for unrelated ones."""
  x, y = _centred(x), _centred(y)
  if x.shape[0] != y.shape[0]:
    raise ValueError(f"linear_cka: x and y must describe the same examples; got {x.shape[0]} and {y.shape[0]} rows")
  cross = np.linalg.norm(y.T @ x) ** 2
  norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
  return float(cross / norm) if norm > 0 else 0.0


def label_cka(features, labels) -> float:
  """Centred kernel alignment between the representations and the labels (Cortes, Mohri and
  Rostamizadeh, "Algorithms for Learning Kernels Based on Centered Alignment", JMLR 2012, with a
  linear kernel on the features and the label kernel Y Y^T of one-hot labels): linear_cka of
  features [n, d] and the one-hot matrix of labels [n] over the classes that occur. Near 1 when
  examples of one label share a direction that examples of other labels do not; near 0 when the
  representations ignore the labels."""
  labels = np.asarray(labels)
  if len(labels) != len(features):
    raise ValueError(f"label_cka: {len(features)} feature rows but {len(labels)} labels")
  _, codes = np.unique(labels, return_inverse=True)
  return linear_cka(features, np.eye(codes.max() + 1)[codes])


def mmd_rbf(x, y, bandwidth: float | None = None) -> float:
  """Squared maximum mean discrepancy between samples x [n, d] and y [m, d] with the Gaussian
  kernel exp(-||a - b||^2 / (2 bandwidth^2)), unbiased estimate (Gretton et al., "A Kernel
  Two-Sample Test", JMLR 2012, eq. 3); bandwidth None = the median pairwise distance of the
  pooled sample (the median heuristic). About 0 for one distribution, larger the further apart."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if len(x) < 2 or len(y) < 2:
    raise ValueError("mmd_rbf needs at least 2 samples on each side")
  pooled = np.concatenate([x, y])
  sq = np.maximum((pooled ** 2).sum(1)[:, None] + (pooled ** 2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0)
  if bandwidth is None:
    off = sq[~np.eye(len(pooled), dtype=bool)]
    bandwidth = float(np.sqrt(np.median(off) / 2.0)) or 1.0
  k = np.exp(-sq / (2.0 * bandwidth ** 2))
  n, m = len(x), len(y)
  kxx, kyy, kxy = k[:n, :n], k[n:, n:], k[:n, n:]
  return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
               - 2.0 * kxy.mean())


def log_me(features, labels, num_classes: int | None = None, max_iterations: int = 50) -> float:
  """LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning",
  ICML 2021): for each class c, the one-hot column y_c of the labels is modelled as
  y_c = features @ w + noise, w ~ N(0, I / alpha), noise ~ N(0, I / beta); alpha and beta are set
  by evidence maximisation (MacKay's fixed-point updates) and the log evidence
  log p(y_c | features, alpha, beta) / n is averaged over the classes that occur. Higher = the
  representations explain the labels better. One eigendecomposition of features^T features
  serves every class. features [n, d], labels [n] ints."""
  f = np.asarray(features, np.float64)
  labels = np.asarray(labels)
  n, d = f.shape
  if len(labels) != n:
    raise ValueError(f"log_me: {n} feature rows but {len(labels)} labels")
  classes = np.unique(labels) if num_classes is None else np.arange(num_classes)
  sigma, v = np.linalg.eigh(f.T @ f)  # features^T features = v diag(sigma) v^T
  basis = (np.maximum(sigma, 0.0), v)
  evidences = [column_evidence(f, (labels == c).astype(np.float64), basis, max_iterations)[0]
               for c in classes if (labels == c).any()]
  if not evidences:
    raise ValueError("log_me: no labels")
  return float(np.mean(evidences))


def column_evidence(f, y, basis=None, max_iterations: int = 50) -> tuple[float, float, float]:
  """(log evidence / n, alpha, beta) of one target column y [n] under LogME's model: alpha, beta by
  MacKay's fixed-point updates, then log p(y | f, alpha, beta) / n in closed form. `basis`: the
  eigendecomposition (sigma, v) of f^T f, when several columns share it."""
  f, y = np.asarray(f, np.float64), np.asarray(y, np.float64)
  n, d = f.shape
  sigma, v = basis if basis is not None else np.linalg.eigh(f.T @ f)
  sigma = np.maximum(sigma, 0.0)
  projected = v.T @ (f.T @ y)  # the column in the eigenbasis
  alpha, beta = 1.0, 1.0
  for _ in range(max_iterations):
    gamma = float((beta * sigma / (alpha + beta * sigma)).sum())  # effective number of parameters
    m = v @ (beta * projected / (alpha + beta * sigma))  # posterior mean of w
    new_alpha = gamma / max(float(m @ m), 1e-12)
    new_beta = max(n - gamma, 1e-12) / max(float(((y - f @ m) ** 2).sum()), 1e-12)
    done = abs(new_alpha / new_beta - alpha / beta) <= 1e-8 * (alpha / beta)
    alpha, beta = new_alpha, new_beta
    if done:
      break
  m = v @ (beta * projected / (alpha + beta * sigma))
  weight_sq, residual_sq = float(m @ m), float(((y - f @ m) ** 2).sum())
  evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.log(alpha + beta * sigma).sum()
              - beta / 2.0 * residual_sq - alpha / 2.0 * weight_sq - n / 2.0 * np.log(2 * np.pi))
  return float(evidence / n), float(alpha), float(beta)


def linear_probe(train_features, train_labels, valid_features, valid_labels, num_classes: int,
                 steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-4, ks=(10,),
                 seed: int = 0) -> dict:
  """A softmax-regression probe on frozen representations (the linear evaluation protocol of
  representation learning, e.g. Kornblith et al., "Do Better ImageNet Models Transfer Better?",
  CVPR 2019): logits = features @ W + b over `num_classes` labels, full-batch Adam with weight
  decay for `steps` steps on the training examples, then accuracy, HR@K and NDCG@K of the
  held-out labels (full ranking; ties count against the label)."""
  x = jnp.asarray(train_features, jnp.float32)
  y = jnp.asarray(train_labels, jnp.int32)
  scale = jnp.maximum(x.std(0, keepdims=True), 1e-6)
  mean = x.mean(0, keepdims=True)
  x = (x - mean) / scale
  params = {"w": jnp.zeros((x.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adamw(lr, weight_decay=weight_decay)
  opt = tx.init(params)

  def loss_fn(p):
    logits = x @ p["w"] + p["b"]
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(p, o):
    loss, g = jax.value_and_grad(loss_fn)(p)
    updates, o = tx.update(g, o, p)
    return optax.apply_updates(p, updates), o, loss

  del seed  # full-batch from zeros: deterministic
  for _ in range(steps):
    params, opt, loss = step(params, opt)
  xv = (jnp.asarray(valid_features, jnp.float32) - mean) / scale
  scores = np.asarray(xv @ params["w"] + params["b"])
  labels = np.asarray(valid_labels)
  target = scores[np.arange(len(labels)), labels]
  rank = (scores >= target[:, None]).sum(1) - 1  # others scoring >= the label
  out = {"train_loss": float(loss), "accuracy": float((rank == 0).mean())}
  for k in ks:
    hit = rank < k
    out[f"hr@{k}"] = float(hit.mean())
    out[f"ndcg@{k}"] = float((hit / np.log2(rank + 2.0)).mean())
  return out


def kendall_tau(a, b) -> float | None:
  """Kendall's tau-b (Kendall, 1945) of two score lists (ties in either count as neither concordant nor
  discordant, normalised by the tie-corrected pair counts); None for fewer than 2 pairs."""
  a, b = np.asarray(a, float), np.asarray(b, float)
  n = len(a)
  if n < 2:
    return None
  concordant = discordant = ties_a = ties_b = 0
  for i in range(n):
    for j in range(i + 1, n):
      da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
      if da == 0 and db == 0:
        continue
      if da == 0:
        ties_a += 1
      elif db == 0:
        ties_b += 1
      elif da == db:
        concordant += 1
      else:
        discordant += 1
  denom = np.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
  return float((concordant - discordant) / denom) if denom > 0 else None
