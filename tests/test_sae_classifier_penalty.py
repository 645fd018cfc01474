"""The SAE classifier is L1 logistic regression whatever the scikit-learn version (issue 13.9)."""

from __future__ import annotations

import numpy as np
import pytest

from codeclens.analyses.sae.classify import (
    SKLEARN_RANGE, ClassifierConfig, effective_penalty, fit_classifier, l1_logistic,
)
from codeclens.errors import CodeclensError


def _sparse_problem(rng, n=400, d=20, informative=3):
    x = rng.standard_normal((n, d))
    w = np.zeros(d)
    w[:informative] = [2.0, -1.5, 1.0]
    y = np.where(x @ w + 0.3 * rng.standard_normal(n) > 0, "a", "b")
    return x, y


def _l1_reference(x, y01, C, iters=20000):
    """sklearn's objective C·Σ logloss + ||w||₁ (intercept unpenalised), minimised by
    proximal gradient (ISTA) in numpy: an L1 reference that owes nothing to scikit-learn."""
    n, d = x.shape
    w, b = np.zeros(d), 0.0
    lip = C * (np.linalg.norm(x, 2) ** 2 + n) / 4  # Lipschitz bound of the smooth part
    step = 1.0 / lip
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(x @ w + b)))
        g = C * (x.T @ (p - y01))
        gb = C * (p - y01).sum()
        w = w - step * g
        w = np.sign(w) * np.maximum(np.abs(w) - step, 0.0)  # prox of ||w||₁
        b -= step * gb
    return w, b


def test_fitted_model_is_l1_with_exact_zeros(rng):
    from sklearn.preprocessing import StandardScaler

    x, y = _sparse_problem(rng)
    cfg = ClassifierConfig(C=0.1, max_iter=5000, tol=1e-8)
    f1, weights = fit_classifier(x[:300], y[:300], x[300:], y[300:], cfg)
    assert f1 > 0.85
    # L1 zeroes the 17 noise features exactly; an L2 fit (what l1_ratio alone gives before
    # scikit-learn 1.8) leaves every coefficient non-zero.
    assert (weights[:3] > 0).all() and (weights[3:] == 0).sum() >= 14
    clf = l1_logistic(cfg.C, cfg.max_iter, cfg.tol, 0)
    assert effective_penalty(clf) == "l1"
    xs = StandardScaler().fit_transform(x[:300])
    clf.fit(xs, y[:300])
    w_ref, _ = _l1_reference(xs, (y[:300] == "b").astype(float), cfg.C)
    np.testing.assert_allclose(clf.coef_[0], w_ref, atol=2e-3)
    assert set(np.flatnonzero(np.abs(w_ref) > 1e-6)) == set(np.flatnonzero(clf.coef_[0]))
    from sklearn.linear_model import LogisticRegression

    l2 = LogisticRegression(C=cfg.C, solver="saga", max_iter=5000).fit(xs, y[:300])
    assert effective_penalty(l2) == "l2" and (l2.coef_ != 0).all()


def test_penalty_is_named_per_version():
    old = l1_logistic(1.0, 100, 1e-4, 0, version=(1, 5))
    assert old.penalty == "l1" and effective_penalty(old) == "l1"
    new = l1_logistic(1.0, 100, 1e-4, 0, version=(1, 9))
    assert new.l1_ratio == 1.0 and effective_penalty(new) == "l1"
    lo, hi = SKLEARN_RANGE
    for v in (hi, (lo[0], lo[1] - 1)):
        with pytest.raises(CodeclensError, match="outside the tested range"):
            l1_logistic(1.0, 100, 1e-4, 0, version=v)


def test_pyproject_pins_the_tested_range():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    lo, hi = SKLEARN_RANGE
    assert re.search(rf'"scikit-learn>={lo[0]}\.{lo[1]},<{hi[0]}\.{hi[1]}"', text)
