"""Transferability estimators against hand-computed cases (issue 13)."""

import numpy as np
import pytest

from xrec.evaluate import transferability as T


def test_linear_cka_is_one_for_identical_rotated_and_scaled_inputs_and_small_for_unrelated():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(200, 8))
  q, _ = np.linalg.qr(rng.normal(size=(8, 8)))
  assert T.linear_cka(x, x) == pytest.approx(1.0)
  assert T.linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
  assert T.linear_cka(x, rng.normal(size=(200, 8))) < 0.15
  # hand-computed: x = [1, -1], y = [2, -2] (centred): (y.x)^2 = 16, x.x = 2, y.y = 8 -> 16 / (2 * 8) = 1
  assert T.linear_cka(np.array([[1.0], [-1.0]]), np.array([[2.0], [-2.0]])) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="same examples"):
    T.linear_cka(x, x[:10])


def test_label_cka_is_one_when_the_representations_are_the_labels_and_small_when_unrelated():
  rng = np.random.default_rng(4)
  labels = rng.integers(0, 5, size=300)
  assert T.label_cka(np.eye(5)[labels], labels) == pytest.approx(1.0)
  q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
  assert T.label_cka(2.0 * np.eye(5)[labels] @ q, labels) == pytest.approx(1.0)  # rotated and scaled
  assert T.label_cka(rng.normal(size=(300, 5)), labels) < 0.1
  # hand-computed: two examples, labels 0 and 1, features 1 and -1: one-hot centred = +-[0.5, -0.5],
  # a rank-one label kernel along the feature's direction -> 1
  assert T.label_cka(np.array([[1.0], [-1.0]]), np.array([3, 7])) == pytest.approx(1.0)
  with pytest.raises(ValueError, match="2 feature rows but 3 labels"):
    T.label_cka(np.ones((2, 1)), np.array([0, 1, 2]))


def test_mmd_is_zero_for_one_distribution_and_grows_with_the_shift():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
  near, far = T.mmd_rbf(a, b, 1.0), T.mmd_rbf(a, b + 1.0, 1.0)
  assert abs(near) < 0.01 and far > 0.1 and T.mmd_rbf(a, b + 3.0, 1.0) > far
  # hand-computed: x = {0, 0}, y = {1, 1} in 1-d, bandwidth 1: k(0,0) = 1, k(0,1) = exp(-1/2)
  x, y = np.zeros((2, 1)), np.ones((2, 1))
  assert T.mmd_rbf(x, y, 1.0) == pytest.approx(1 + 1 - 2 * np.exp(-0.5))


def test_log_me_is_the_maximised_gaussian_evidence_and_ranks_informative_features_first():
  rng = np.random.default_rng(2)
  n, d, k = 60, 5, 3
  labels = rng.integers(0, k, size=n)
  informative = np.eye(k)[labels] @ rng.normal(size=(k, d)) + 0.1 * rng.normal(size=(n, d))
  assert T.log_me(informative, labels) > T.log_me(rng.normal(size=(n, d)), labels)
  # one column's value is the log marginal likelihood of Bayesian linear regression,
  # log N(y | 0, F F^T / alpha + I / beta) / n, computed here densely, at the alpha and beta the
  # updates reach, and that point is a maximum of it
  f, y = informative, (labels == 0).astype(float)

  def dense(alpha, beta):
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return (-0.5 * (y @ np.linalg.solve(cov, y)) - 0.5 * logdet - n / 2 * np.log(2 * np.pi)) / n

  value, alpha, beta = T.column_evidence(f, y)
  assert value == pytest.approx(dense(alpha, beta), abs=1e-9)
  for da, db in [(1.3, 1), (1 / 1.3, 1), (1, 1.3), (1, 1 / 1.3)]:
    assert dense(alpha * da, beta * db) < value
  # log_me averages the columns of the classes that occur
  want = np.mean([T.column_evidence(f, (labels == c).astype(float))[0] for c in range(k)])
  assert T.log_me(f, labels) == pytest.approx(want)


def test_a_linear_probe_separates_separable_representations():
  rng = np.random.default_rng(3)
  k, d = 4, 6
  centres = rng.normal(size=(k, d)) * 5
  labels = rng.integers(0, k, size=400)
  feats = centres[labels] + rng.normal(size=(400, d))
  out = T.linear_probe(feats[:300], labels[:300], feats[300:], labels[300:], num_classes=k, steps=200, ks=(1, 2))
  assert out["accuracy"] == 1.0 and out["hr@1"] == 1.0 and out["ndcg@2"] == 1.0
  random_out = T.linear_probe(rng.normal(size=(300, d)), labels[:300], rng.normal(size=(100, d)), labels[300:],
                              num_classes=k, steps=200, ks=(1,))
  assert random_out["accuracy"] < 0.5


def test_kendall_tau_b_on_hand_cases():
  assert T.kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
  assert T.kendall_tau([1, 2, 3], [30, 20, 10]) == pytest.approx(-1.0)
  # pairs (1,2) concordant, (1,3) concordant, (2,3) discordant -> (2 - 1) / 3
  assert T.kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
  # a tie in a: (1,2) tied in a only; (1,3), (2,3) concordant -> 2 / sqrt(2 * 3)
  assert T.kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / np.sqrt(6))
  assert T.kendall_tau([1], [2]) is None
