"""Accent (or any label) classification from SAE codes: z, position-only, magnitude-only.

Wang et al. 2026 §2.3-2.4: logistic regression (saga, L1, max_iter 3000) on
standardized features; macro-F1; ΔF1 = F1(features) − F1(reference on u).
- z_pos ∈ {0,1}^{d_z}: 1 where a latent is active, positions only;
- z_mag ∈ R^k: the k active magnitudes sorted descending, positions discarded.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np

from ...errors import CodeclensError


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


SKLEARN_RANGE = ((1, 4), (1, 10))
"""scikit-learn versions [low, high) whose LogisticRegression API :func:`l1_logistic` knows (pyproject pins it)."""


def _sklearn_version() -> tuple[int, int]:
    import sklearn

    major, minor = (int(re.match(r"\d+", p).group()) for p in sklearn.__version__.split(".")[:2])
    return major, minor


def l1_logistic(C: float, max_iter: int, tol: float, seed: int, version: tuple[int, int] | None = None):
    """An L1-penalised logistic regression (saga), whatever the scikit-learn version.

    ``l1_ratio=1`` alone means L1 only from scikit-learn 1.8 (before, ``penalty`` defaults to
    'l2' and ``l1_ratio`` is ignored: silently L2); ``penalty='l1'`` is deprecated from 1.8
    and removed in 1.10. So the penalty is named the way the running version reads it, and
    versions outside :data:`SKLEARN_RANGE` are refused rather than guessed."""
    from sklearn.linear_model import LogisticRegression

    version = version or _sklearn_version()
    lo, hi = SKLEARN_RANGE
    if not lo <= version < hi:
        raise CodeclensError(
            f"scikit-learn {version[0]}.{version[1]} is outside the tested range "
            f"{lo[0]}.{lo[1]} <= v < {hi[0]}.{hi[1]}; the L1 penalty could be misread (see pyproject.toml)"
        )
    common = dict(solver="saga", C=C, max_iter=max_iter, tol=tol, random_state=seed)
    if version >= (1, 8):
        return LogisticRegression(l1_ratio=1.0, **common)
    return LogisticRegression(penalty="l1", **common)


def effective_penalty(clf) -> str:
    """The penalty a LogisticRegression actually fits: 'l1', 'l2' or 'elasticnet'."""
    pen = getattr(clf, "penalty", "deprecated")
    if pen == "deprecated":  # scikit-learn >= 1.8: l1_ratio decides
        r = clf.l1_ratio
        return "l2" if not r else ("l1" if r == 1 else "elasticnet")
    return pen


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
    labels = np.unique(np.concatenate([np.asarray(y_train), np.asarray(y_test)]))
    [pred], w = fit_predict(x_train, y_train, [x_test], cfg)
    return macro_f1(y_test, pred, labels), w


class L1Model:
    """The L1 logistic regression on standardized features, fitted once and applied to any rows
    (so evaluation rows can be predicted chunk by chunk: predictions are per row)."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, cfg: ClassifierConfig = ClassifierConfig()):
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.preprocessing import StandardScaler

        y_train = np.asarray(y_train)
        self.constant = y_train[0] if len(np.unique(y_train)) < 2 else None
        if self.constant is not None:
            # One class seen in training: the classifier can only predict it.
            self.weights = np.zeros(np.asarray(x_train).shape[1])
            return
        x_train = np.asarray(x_train)
        # Columns constant on the training rows (latents that never fire there: most of z when
        # d_z is large and k small) standardize to 0, so saga's gradient and L1 step leave their
        # coefficients at exactly 0 and they add nothing to any prediction. Fitting without them
        # gives the same model (tested) for a fraction of saga's per-iteration cost.
        self.keep = np.flatnonzero(np.ptp(x_train, axis=0) > 0) if x_train.shape[0] else np.arange(x_train.shape[1])
        if len(self.keep) == 0:
            self.keep = np.arange(min(1, x_train.shape[1]))  # intercept only, as with all columns at 0
        x_fit = x_train[:, self.keep]
        self.scaler = StandardScaler().fit(x_fit)
        self.clf = l1_logistic(cfg.C, cfg.max_iter, cfg.tol, cfg.seed)
        if effective_penalty(self.clf) != "l1":  # never silently fit another penalty
            raise CodeclensError(f"logistic regression would fit a '{effective_penalty(self.clf)}' penalty, not L1")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.clf.fit(self.scaler.transform(x_fit), y_train)
        self.weights = np.zeros(x_train.shape[1])
        """Per feature: max |coefficient| over classes (on standardized features; 0 for dropped columns)."""
        self.weights[self.keep] = np.abs(self.clf.coef_).max(0)

    def predict(self, x: np.ndarray) -> np.ndarray:
        if self.constant is not None:
            return np.full(len(x), self.constant, dtype=object)
        if not len(x):
            return np.zeros(0, dtype=object)
        return self.clf.predict(self.scaler.transform(np.asarray(x)[:, self.keep]))


def fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_eval: list, cfg: ClassifierConfig = ClassifierConfig()):
    """(predictions for each array of ``x_eval``, per-feature weight) of the L1 logistic regression
    fit on standardized train rows."""
    model = L1Model(x_train, y_train, cfg)
    return [model.predict(x) for x in x_eval], model.weights


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
