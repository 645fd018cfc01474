"""Accent (or any label) classification from SAE codes: z, position-only, magnitude-only.

Wang et al. 2026 §2.3-2.4: logistic regression (saga, L1, max_iter 3000) on
standardized features; macro-F1; ΔF1 = F1(features) − F1(reference on u).
- z_pos ∈ {0,1}^{d_z}: 1 where a latent is active, positions only;
- z_mag ∈ R^k: the k active magnitudes sorted descending, positions discarded.
"""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
    """Logistic regression settings (paper: saga, L1, max_iter 3000; C not stated, sklearn's 1.0)."""

    C: float = 1.0
    """Inverse L1 regularisation strength."""
    max_iter: int = 3000
    """Maximum saga iterations."""
    tol: float = 1e-4
    """Stopping tolerance."""
    seed: int = 0
    """Random state of saga."""

    def __post_init__(self):
        if self.C <= 0 or self.max_iter < 1:
            raise ValueError("C must be > 0 and max_iter >= 1")


def position_features(z: np.ndarray) -> np.ndarray:
    """1 where the latent is active, 0 elsewhere."""
    return (np.asarray(z) > 0).astype(np.float32)


def magnitude_features(z: np.ndarray, k: int) -> np.ndarray:
    """The k largest activations of each row in descending order (zeros pad rows with fewer)."""
    z = np.asarray(z, dtype=np.float32)
    k = min(k, z.shape[1])
    part = -np.partition(-z, k - 1, axis=1)[:, :k]
    return -np.sort(-part, axis=1)


def macro_f1(y_true: np.ndarray, y_pred: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0))


def fit_score(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    cfg: ClassifierConfig = ClassifierConfig(),
) -> float:
    """Macro-F1 on the test rows of an L1 logistic regression fit on standardized train rows."""
    return fit_classifier(x_train, y_train, x_test, y_test, cfg)[0]


def fit_classifier(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray,
    cfg: ClassifierConfig = ClassifierConfig(),
) -> tuple[float, np.ndarray]:
    """(macro-F1 on the test rows, per-feature weight = max |coefficient| over classes).

    Weights are on standardized features, so they compare across features; L1 makes
    most of them exactly zero."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    labels = np.unique(np.concatenate([np.asarray(y_train), np.asarray(y_test)]))
    if len(np.unique(y_train)) < 2:
        # One class seen in training: the classifier can only predict it.
        pred = np.full(len(y_test), np.asarray(y_train)[0])
        return macro_f1(y_test, pred, labels), np.zeros(np.asarray(x_train).shape[1])
    scaler = StandardScaler().fit(x_train)
    clf = LogisticRegression(
        l1_ratio=1.0, solver="saga", C=cfg.C, max_iter=cfg.max_iter, tol=cfg.tol, random_state=cfg.seed
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(scaler.transform(x_train), y_train)
    f1 = macro_f1(y_test, clf.predict(scaler.transform(x_test)), labels)
    return f1, np.abs(clf.coef_).max(0)


@dataclasses.dataclass(frozen=True)
class DeltaF1:
    """F1 of z, z_pos and z_mag with ΔF1 against the reference on u (all in [0, 1])."""

    f1_ref: float
    f1: dict
    """feature name ('z', 'position', 'magnitude') -> macro-F1"""
    weights: dict = dataclasses.field(default_factory=dict)
    """feature name -> per-feature |coefficient| of its classifier (for z: one per latent)"""

    @property
    def delta(self) -> dict:
        return {name: v - self.f1_ref for name, v in self.f1.items()}


FEATURES = ("z", "position", "magnitude")


def code_features(z: np.ndarray, k: int) -> dict[str, np.ndarray]:
    return {"z": np.asarray(z, np.float32), "position": position_features(z), "magnitude": magnitude_features(z, k)}


def delta_f1(
    z_train: np.ndarray, y_train: np.ndarray, z_test: np.ndarray, y_test: np.ndarray, k: int,
    f1_ref: float, cfg: ClassifierConfig = ClassifierConfig(), features: tuple[str, ...] = FEATURES,
) -> DeltaF1:
    tr, te = code_features(z_train, k), code_features(z_test, k)
    fits = {f: fit_classifier(tr[f], y_train, te[f], y_test, cfg) for f in features}
    return DeltaF1(f1_ref, {f: r[0] for f, r in fits.items()}, {f: r[1] for f, r in fits.items()})
