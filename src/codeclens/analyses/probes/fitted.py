"""Train one probe and reuse it elsewhere (e.g. on codes of re-encoded audio).

>>> probe = fit_probe("stores/melrvq", "phone", "layer:1")
>>> probe.predict(vectors)                    # [n, D] raw layer-1 vectors -> phone labels
>>> probe.predict_codes(codes, store.tables)  # [T, L] codes -> phone labels
>>> probe.save("phone_probe.npz"); FittedProbe.load("phone_probe.npz")
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ...errors import CodeclensError
from ...store import Repr, Store, parse_reprs
from ...util.atomic import atomic_path
from . import metrics as M
from .config import ProbeConfig


@dataclasses.dataclass(frozen=True)
class FittedProbe:
    """A linear probe: ``logits = ((x - mean) @ proj) @ W + b`` on raw representation vectors."""

    task: str
    column: str
    representation: str
    categorical: bool
    classes: tuple[str, ...]
    """Predictable classes (index i of a prediction is classes[i]); empty for regression."""
    mean: np.ndarray
    proj: np.ndarray
    W: np.ndarray
    b: np.ndarray
    l2: float
    test_scores: dict[str, float] = dataclasses.field(default_factory=dict)
    """Held-out scores of this probe on the store it was fitted on."""

    @property
    def repr(self) -> Repr:
        (r,) = parse_reprs(self.representation)
        return r

    def decision(self, X: np.ndarray) -> np.ndarray:
        """Logits ``[n, C]`` (classification) or predicted values ``[n]``."""
        X = np.asarray(X, np.float64)
        if X.ndim != 2 or X.shape[1] != self.mean.shape[0]:
            raise CodeclensError(
                f"probe for {self.representation} expects [n, {self.mean.shape[0]}] features, got {list(X.shape)}"
            )
        return ((X - self.mean) @ self.proj) @ self.W + self.b

    def predict_index(self, X: np.ndarray) -> np.ndarray:
        d = self.decision(X)
        return d.argmax(1) if self.categorical else d

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Class names (classification) or values (regression)."""
        d = self.predict_index(X)
        return np.asarray(self.classes, dtype=object)[d] if self.categorical else d

    def features(self, codes: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
        """The probe's representation of ``codes [T, L]`` (layer:k, cumulative:k, codes:k) via lookup tables."""
        r = self.repr
        codes = np.asarray(codes, np.int64)
        if r.kind == "latent" or r.pooled:
            raise CodeclensError(f"{r}: not a function of codes; pass the vectors to predict()")
        k = r.layer - 1
        if r.kind == "codes":
            return np.eye(len(self.mean))[codes[:, k]]
        if r.kind == "layer":
            return np.asarray(tables[k], np.float64)[codes[:, k]]
        return sum(np.asarray(tables[l], np.float64)[codes[:, l]] for l in range(k + 1))

    def predict_codes(self, codes: np.ndarray, tables: Sequence[np.ndarray]) -> np.ndarray:
        return self.predict(self.features(codes, tables))

    def score(self, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
        """Accuracy and macro-F1 (labels as class names), or R^2 and MAE."""
        if self.categorical:
            names = {c: i for i, c in enumerate(self.classes)}
            extra = {c: len(names) + i for i, c in enumerate(sorted(set(map(str, y)) - set(names)))}
            yt = np.array([names.get(str(v), extra.get(str(v), -1)) for v in y])
            yp = self.predict_index(X)
            return {"accuracy": M.accuracy(yt, yp), "macro_f1": M.macro_f1(yt, yp, len(names) + len(extra))}
        yp = self.predict_index(X)
        return {"r2": M.r2_score(y, yp), "mae": M.mae(y, yp)}

    # -- persistence -----------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        meta = {k: getattr(self, k) for k in ("task", "column", "representation", "categorical", "l2", "test_scores")}
        meta["classes"] = list(self.classes)
        with atomic_path(path, ".npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, mean=self.mean, proj=self.proj, W=self.W, b=self.b, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FittedProbe":
        try:
            z = np.load(path, allow_pickle=False)
            meta: dict[str, Any] = json.loads(str(z["meta"]))
        except (OSError, KeyError, ValueError) as e:
            raise CodeclensError(f"{path}: not a saved probe ({e})") from None
        meta["classes"] = tuple(meta["classes"])
        return cls(mean=z["mean"], proj=z["proj"], W=z["W"], b=z["b"], **meta)


def fit_probe(store: Store | str, task: str, repr: str, cfg: ProbeConfig | None = None, **overrides: Any) -> FittedProbe:
    """Fit one probe (no control) with the usual L2 selection on val; see :class:`ProbeConfig`. When the
    task would be cross-validated over speakers (few test speakers), this is the probe of the first fold."""
    from .run import _scores, fit, make_jobs, open_store_list, resampling, task_data

    cfg = dataclasses.replace(cfg or ProbeConfig(), **{**overrides, "task": (task,), "repr": repr, "control": "none"})
    (s,) = open_store_list([store])
    td = task_data(s, task, cfg)[0]  # cross-validated (few speakers): the probe of the first fold
    jobs = make_jobs([s], [td], cfg)
    if len(jobs) != 1:
        raise CodeclensError(f"fit_probe takes one representation, got '{repr}' ({len(jobs)})")
    (f,) = fit(jobs, cfg)
    rs = resampling(s, td, dataclasses.replace(cfg, bootstrap=0))
    scores = {k: v for k, (v, _, _) in _scores(td, td.y["test"], f.pred_test, rs).items()}
    return FittedProbe(
        task, td.column, jobs[0].rep.name, td.categorical, td.classes[: td.n_train_classes],
        np.asarray(f.whitener.mean, np.float64), np.asarray(f.whitener.proj, np.float64),
        np.asarray(f.W, np.float64), np.asarray(f.b, np.float64), f.l2, scores,
    )
