"""The scikit-learn backend (``--backend sklearn``): the usual approach, for parity checks.

Each probe is fitted on its own, on standardized frames, with
``LogisticRegression(lbfgs)`` / ``Ridge`` (``LinearRegression`` when l2 = 0),
one fit per L2 strength, the best kept on val. The strengths mean the same
objective as the torch backend's (mean loss + l2 |W|^2), but on standardized
rather than whitened features.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np

from ...errors import CodeclensError
from .config import ProbeConfig
from .data import Whitener
from .lookup import code_sums, code_vectors, count_table, lookup_classifier, lookup_regressor
from .metrics import macro_f1, nearest_centroid_loo
from .torch_backend import Job, JobFit


def raw_features(job: Job, split: str) -> np.ndarray:
    rows = job.td.rows[split]
    store, rep = job.store, job.rep
    if job.td.level == "utterance":
        from ...store import Repr

        return np.asarray(store.values(Repr(rep.kind, rep.layer, True))[rows], np.float64)
    if rep.kind == "codes":
        k = rep.layer - 1
        return np.eye(store.codebook_sizes[k])[np.asarray(store.codes[rows, k], np.int64)]
    return np.asarray(store.materialize(rep, rows), np.float64)


def fit_jobs(jobs: Sequence[Job], cfg: ProbeConfig, log=None) -> list[JobFit]:
    if cfg.l1 > 0:
        raise CodeclensError("--l1 is only supported by the torch backend")
    out = []
    for job in jobs:
        out.append(fit_one(job, cfg))
        if log:
            log(1)
    return out


def _new_model(job: Job, l2: float, n_weight: float, cfg: ProbeConfig):
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge

    if job.td.categorical:
        C = 1e12 if l2 == 0 else 1.0 / (2.0 * l2 * n_weight)
        return LogisticRegression(C=C, max_iter=cfg.max_iter, class_weight="balanced" if cfg.balance else None)
    return LinearRegression() if l2 == 0 else Ridge(alpha=l2 * n_weight)


def fit_one(job: Job, cfg: ProbeConfig) -> JobFit:
    from sklearn.preprocessing import StandardScaler

    X = {s: raw_features(job, s) for s in ("train", "val", "test")}
    scaler = StandardScaler().fit(X["train"])
    Xs = {s: scaler.transform(x) if len(x) else x for s, x in X.items()}
    ytr = job.y["train"]
    best = None
    for l2 in cfg.l2:
        model = _new_model(job, l2, float(len(ytr)), cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings: max_iter is the user's choice
            model.fit(Xs["train"], ytr)
        if len(cfg.l2) == 1 or not len(Xs["val"]):
            score = 0.0
        elif job.td.open_set:
            score = float(np.mean(nearest_centroid_loo(Xs["val"] @ model.coef_.T, job.y["val"], job.td.groups["val"]) == job.y["val"]))
        elif job.td.categorical:
            score = macro_f1(job.y["val"], model.predict(Xs["val"]), job.td.n_classes)
        else:
            score = -float(np.mean((model.predict(Xs["val"]) - job.y["val"]) ** 2))
        # ">=": on ties keep the later (stronger) strength, as the torch backend does.
        if best is None or score >= best[0]:
            best = (score, l2, model)
    _, l2, model = best
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    wh = Whitener(scaler.mean_, np.diag(1.0 / scale))
    if job.td.categorical:
        coef, icpt = model.coef_.T, model.intercept_
        if coef.shape[1] == 1:  # binary: sklearn keeps one logit; make it two
            coef, icpt = np.hstack([np.zeros_like(coef), coef]), np.array([0.0, icpt[0]])
        # classes absent from train get a very low bias so they are never predicted
        W, b = np.zeros((coef.shape[0], job.td.n_train_classes)), np.full(job.td.n_train_classes, -1e9)
        W[:, model.classes_], b[model.classes_] = coef, icpt
        pred = model.predict(Xs["test"])
        if job.td.open_set:
            emb = Xs["test"] @ model.coef_.T
            return JobFit(wh, W, b, float(l2), nearest_centroid_loo(emb, job.y["test"], job.td.groups["test"]), None, 0, emb)
    else:
        W, b = np.asarray(model.coef_), np.asarray(model.intercept_)
        pred = model.predict(Xs["test"])
    lookup_test = None
    if job.lookup:
        cv = code_vectors(job.store, job.rep, job.td.rows)
        U = len(cv.vectors)
        if job.td.categorical:
            lookup_test = lookup_classifier(count_table(cv.ids["train"], ytr, U, job.td.n_train_classes))[cv.ids["test"]]
        else:
            lookup_test = lookup_regressor(code_sums(cv.ids["train"], ytr, U))[cv.ids["test"]]
    return JobFit(wh, W, b, float(l2), np.asarray(pred), lookup_test)
