"""Transferability scores: how well will a pretrained model transfer, from one forward pass?

All scores take numpy arrays computed by the frozen source model on (a sample of) the target:
`features` [N, D] (penultimate layer), `source_probs` [N, Z] (softmax of the source head, for
LEEP and NCE) and target `labels` [N]. Higher is better for every score.

- LogME (You et al., 2021): log marginal evidence of a Bayesian linear model on the features,
  per target class (one-hot), averaged; per example.
- LEEP (Nguyen et al., 2020): log expected empirical prediction of the target labels through
  the source head's soft labels.
- NCE (Tran et al., 2019): negative conditional entropy H(Y | Z) of target labels given the
  source model's hard labels.
- H-score (Bao et al., 2019): tr(cov(f)^-1 cov(E[f | y])), the discriminability of features.
"""

from __future__ import annotations

import numpy as np


def _check(labels: np.ndarray, n: int) -> np.ndarray:
    labels = np.asarray(labels).astype(np.int64)
    if labels.ndim != 1 or len(labels) != n:
        raise ValueError(f"labels must be [N={n}], got shape {labels.shape}")
    return labels


def logme(features: np.ndarray, labels: np.ndarray, max_iter: int = 11) -> float:
    """LogME with the fixed-point evidence maximization of the reference implementation.

    The evidence needs the spectrum of F^T F (d x d). With fewer examples than features it is
    read off F F^T (n x n) instead, whose eigenvalues are the same nonzero ones (the other
    d - n are 0): for 1,000 examples of 1,280-d ImageNet features that is 20x cheaper than
    decomposing F^T F, and equal to rounding.
    """
    f = np.asarray(features, np.float64)
    n, d = f.shape
    labels = _check(labels, n)
    if n < d:  # the sample's basis: F^T y and F m through F's left singular vectors u
        s, u = np.linalg.eigh(f @ f.T)
        s = np.maximum(s, 0.0)
        singular = np.sqrt(s)  # F's singular values, once: the fixed point reads them each step

        def project(y: np.ndarray) -> np.ndarray:
            return singular * (u.T @ y)

        def fitted(coef: np.ndarray) -> np.ndarray:
            return u @ (singular * coef)
    else:  # the features' basis: F^T F's eigenvectors v
        s, v = np.linalg.eigh(f.T @ f)
        s = np.maximum(s, 0.0)

        def project(y: np.ndarray) -> np.ndarray:
            return v.T @ (f.T @ y)

        def fitted(coef: np.ndarray) -> np.ndarray:
            return f @ (v @ coef)

    evidences = []
    for c in np.unique(labels):
        y = (labels == c).astype(np.float64)
        alpha, beta, lam = 1.0, 1.0, 1.0
        proj = project(y)  # F^T y in the eigenbasis (its part in F's null space is 0)
        for _ in range(max_iter):
            gamma = float(np.sum(s / (s + lam)))
            coef = proj * beta / (alpha + beta * s)  # the posterior mean m, in that basis
            alpha_de = float(coef @ coef)
            alpha = gamma / (alpha_de + 1e-5)
            beta_de = float(np.sum((y - fitted(coef)) ** 2))  # |y - F m|^2
            beta = (n - gamma) / (beta_de + 1e-5)
            new_lam = alpha / beta
            if abs(new_lam - lam) / lam < 0.01:
                lam = new_lam
                break
            lam = new_lam
        log_det = np.sum(np.log(alpha + beta * s)) + (d - len(s)) * np.log(alpha)
        evidence = (
            d / 2.0 * np.log(alpha)
            + n / 2.0 * np.log(beta)
            - 0.5 * log_det
            - beta / 2.0 * (beta_de + 1e-5)
            - alpha / 2.0 * (alpha_de + 1e-5)
            - n / 2.0 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _joint(source_probs: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Empirical joint P(y, z) = 1/N sum_i theta(x_i)_z [y_i = y], shape [Y, Z]."""
    onehot = np.eye(num_classes)[labels]
    return onehot.T @ source_probs / len(labels)


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z."""
    p = np.asarray(source_probs, np.float64)
    labels = _check(labels, len(p))
    joint = _joint(p, labels, int(labels.max()) + 1)
    cond = joint / np.maximum(joint.sum(0, keepdims=True), 1e-12)  # P(y | z)
    eep = np.sum(cond[labels] * p, axis=1)
    return float(np.mean(np.log(np.maximum(eep, 1e-12))))


def nce(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """NCE = -H(Y | Z) with Z the source model's hard predictions."""
    p = np.asarray(source_probs)
    labels = _check(labels, len(p))
    z = np.argmax(p, axis=1)
    hard = np.eye(p.shape[1])[z]
    joint = _joint(hard, labels, int(labels.max()) + 1)
    pz = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.maximum(pz, 1e-12))[nz])))


def h_score(features: np.ndarray, labels: np.ndarray, shrinkage: float = 1e-6) -> float:
    """tr(cov(f)^+ cov(E[f | y])) with a small ridge for numerical stability."""
    f = np.asarray(features, np.float64)
    labels = _check(labels, len(f))
    f = f - f.mean(0)
    cov = f.T @ f / len(f)
    class_means = np.zeros_like(f)
    for c in np.unique(labels):
        idx = labels == c
        class_means[idx] = f[idx].mean(0)
    cov_g = class_means.T @ class_means / len(f)
    reg = shrinkage * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0])
    # The ridge makes cov + reg positive definite: one solve, not a pseudo-inverse's SVD.
    return float(np.trace(np.linalg.solve(cov + reg, cov_g)))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy with cosine similarity (a training-free probe)."""
    f = np.asarray(features, np.float64)
    labels = _check(labels, len(f))
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    k = min(k, len(f) - 1)
    nn = np.argpartition(-sim, k - 1, axis=1)[:, :k]
    votes = np.zeros((len(f), int(labels.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(len(f)), k), labels[nn].ravel()), 1.0)
    return float(np.mean(np.argmax(votes, 1) == labels))


def all_scores(
    features: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None = None
) -> dict[str, float]:
    out = {
        "logme": logme(features, labels),
        "h_score": h_score(features, labels),
        "knn_accuracy": knn_accuracy(features, labels),
    }
    if source_probs is not None:
        out["leep"] = leep(source_probs, labels)
        out["nce"] = nce(source_probs, labels)
    return out
