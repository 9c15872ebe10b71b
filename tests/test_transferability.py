"""Transferability scores against hand-computed and qualitative references."""

import numpy as np
import pytest

from jtl.advisor import transferability as tr


def _separable(n=200, d=8, c=4, noise=0.1, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % c
    centers = rng.normal(size=(c, d)) * 3
    return centers[labels] + noise * rng.normal(size=(n, d)), labels


def test_logme_prefers_separating_features_over_shuffled_labels():
    f, y = _separable()
    shuffled = np.random.default_rng(1).permutation(y)
    assert tr.logme(f, y) > tr.logme(f, shuffled) + 0.1


def test_logme_prefers_informative_over_random_features():
    f, y = _separable(noise=0.1)
    rnd = np.random.default_rng(3).normal(size=f.shape)
    assert tr.logme(f, y) > tr.logme(rnd, y)


def _logme_direct(f: np.ndarray, labels: np.ndarray) -> float:
    """The reference's form: the full eigendecomposition of F^T F (d x d), d x d products."""
    n, d = f.shape
    s, v = np.linalg.eigh(f.T @ f)
    s = np.maximum(s, 0.0)
    out = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta, lam = 1.0, 1.0, 1.0
        for _ in range(11):
            gamma = np.sum(s / (s + lam))
            m = v @ ((v.T @ (f.T @ y)) * beta / (alpha + beta * s))
            alpha_de, beta_de = m @ m, np.sum((y - f @ m) ** 2)
            alpha, beta = gamma / (alpha_de + 1e-5), (n - gamma) / (beta_de + 1e-5)
            stop = abs(alpha / beta - lam) / lam < 0.01
            lam = alpha / beta
            if stop:
                break
        evidence = d / 2 * np.log(alpha) + n / 2 * np.log(beta) - n / 2 * np.log(2 * np.pi)
        evidence -= 0.5 * np.sum(np.log(alpha + beta * s))
        evidence -= beta / 2 * (beta_de + 1e-5) + alpha / 2 * (alpha_de + 1e-5)
        out.append(evidence / n)
    return float(np.mean(out))


@pytest.mark.parametrize("n,d", [(60, 200), (200, 16), (64, 64)])
def test_logme_equals_the_full_eigendecomposition(n, d):
    """Fewer examples than features (ImageNet features) takes the n x n route: same evidence."""
    f, y = _separable(n=n, d=d, noise=2.0)
    assert tr.logme(f, y) == pytest.approx(_logme_direct(f, y), rel=1e-9)


def test_h_score_equals_the_pseudo_inverse_form():
    f, y = _separable(n=60, d=100, noise=1.0)
    g = f - f.mean(0)
    cov = g.T @ g / len(g)
    means = np.stack([g[y == c].mean(0) for c in y])
    reg = 1e-6 * np.trace(cov) / len(cov) * np.eye(len(cov))
    expected = np.trace(np.linalg.pinv(cov + reg) @ (means.T @ means / len(g)))
    assert tr.h_score(f, y) == pytest.approx(expected, rel=1e-6)


def test_leep_closed_form_on_three_examples():
    theta = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 1])
    # Joint P(y, z) = 1/3 sum_i theta_iz [y_i = y].
    joint = np.array([[0.7, 0.3], [0.2 + 0.6, 0.8 + 0.4]]) / 3
    cond = joint / joint.sum(0)
    expected = np.mean(
        [np.log(sum(cond[y[i], z] * theta[i, z] for z in range(2))) for i in range(3)]
    )
    assert tr.leep(theta, y) == pytest.approx(expected, rel=1e-12)


def test_nce_is_zero_when_source_labels_determine_target():
    theta = np.eye(3)[[0, 1, 2, 0, 1, 2]]
    y = np.array([2, 0, 1, 2, 0, 1])
    assert tr.nce(theta, y) == pytest.approx(0.0, abs=1e-12)
    # Independent source labels: NCE = -H(Y) = -log 2 for two balanced classes.
    theta2 = np.eye(2)[[0, 0, 1, 1]]
    y2 = np.array([0, 1, 0, 1])
    assert tr.nce(theta2, y2) == pytest.approx(-np.log(2), rel=1e-9)


def test_h_score_higher_for_discriminative_features():
    f, y = _separable(noise=0.1)
    g, _ = _separable(noise=5.0)
    assert tr.h_score(f, y) > tr.h_score(g, y)
    # Bounded by the number of classes - 1 (rank of the between-class covariance).
    assert tr.h_score(f, y) <= 3 + 1e-6


def test_knn_accuracy():
    f, y = _separable(noise=0.1)
    assert tr.knn_accuracy(f, y) == 1.0
    rnd = np.random.default_rng(0).normal(size=f.shape)
    assert tr.knn_accuracy(rnd, y) < 0.5


def test_bad_labels_shape():
    with pytest.raises(ValueError, match="labels"):
        tr.logme(np.zeros((4, 2)), np.zeros(3))
