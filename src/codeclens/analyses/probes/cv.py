"""Speaker-fold cross-validation: k folds over speakers, predictions pooled.

With few speakers a 70/10/20 speaker split leaves one or two test speakers
(with 12 speakers: 2, possibly both male; F0 R^2 is then about those two). Folds
over speakers instead test every speaker once: fold f is the test set, fold f+1
the validation set (for the L2 choice), the rest train; the test predictions of
all folds are pooled and scored as one test set of every speaker, and the
bootstrap resamples speakers.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ...labels.splits import unit_interval
from ...store import Store
from .config import ProbeConfig
from .data import SPEAKER_TASKS, TaskData, default_split, gather_task, resolve_column

CV_SPLIT = "cv_spk"
"""The split name of pooled cross-validated tasks."""


def speaker_folds(speakers: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold of every utterance: speakers in seeded-hash order dealt round-robin (balanced folds)."""
    uniq = np.unique(speakers)
    order = np.argsort(unit_interval(seed, np.full(len(uniq), "fold"), uniq), kind="stable")
    fold_of = np.empty(len(uniq), np.int64)
    fold_of[order] = np.arange(len(uniq)) % k
    return fold_of[np.searchsorted(uniq, speakers)]


def test_speakers(store: Store, column: str = "split_spk") -> int:
    u = store.utterances
    if column not in u.columns or "speaker" not in u.columns:
        return 0
    return int(u.loc[u[column].astype(str) == "test", "speaker"].nunique())


def use_cv(store: Store, task: str, cfg: ProbeConfig) -> bool:
    """Cross-validate over speakers: on request, or (auto) when the speaker split holds too few test speakers.
    Only for tasks on speaker-disjoint splits that are not speaker identity (open-set ID needs one test set)."""
    if cfg.cv == "off" or "speaker" not in store.utterances.columns:
        return False
    if store.utterances["speaker"].nunique() < 3:  # train, val and test folds
        return False
    column = resolve_column(store, task)
    if task in SPEAKER_TASKS or column in SPEAKER_TASKS:
        return False
    if cfg.split == "utt" or (cfg.split == "auto" and default_split(task, column) != "split_spk"):
        return False
    if cfg.cv == "on":
        return True
    return test_speakers(store) < cfg.min_test_speakers


def fold_tasks(store: Store, task: str, cfg: ProbeConfig) -> list[TaskData]:
    """One TaskData per fold (test = fold f, val = fold f+1, train = the rest)."""
    spk = store.utterances["speaker"].astype(str).to_numpy()
    k = min(cfg.folds, len(np.unique(spk)))  # use_cv guarantees at least 3 speakers
    fold = speaker_folds(spk, k, cfg.seed)
    out = []
    for f in range(k):
        split = np.full(len(spk), "train", dtype=object)
        split[fold == (f + 1) % k] = "val"
        split[fold == f] = "test"
        out.append(gather_task(store, task, cfg, split=(CV_SPLIT, split.astype(str))))
    return out


def target_range(y_train: np.ndarray, y_test: np.ndarray) -> tuple[float, float]:
    """(share of test targets outside the train range [1st, 99th percentile],
    share of the train range [5th, 95th] covered by the test targets' [5th, 95th])."""
    if not len(y_test) or not len(y_train):
        return float("nan"), float("nan")
    lo, hi = np.quantile(y_train, [0.01, 0.99])
    out = float(np.mean((y_test < lo) | (y_test > hi)))
    a, b = np.quantile(y_train, [0.05, 0.95])
    c, d = np.quantile(y_test, [0.05, 0.95])
    cover = max(0.0, min(b, d) - max(a, c)) / (b - a) if b > a else float("nan")
    return out, float(cover)


@dataclasses.dataclass(frozen=True)
class Pooled:
    """A cross-validated task: the pooled TaskData and what cannot be recomputed from it."""

    td: TaskData
    """Test rows of every fold (in fold order), labels in one class encoding; train/val rows of fold 0."""
    chance_pred: np.ndarray
    """Test predictions of the majority class / train-mean predictor of each row's own fold."""
    target_range: tuple[float, float]
    """Worst fold's (test share outside train range, test coverage of train range)."""
    folds: tuple[TaskData, ...]


def _lut(td: TaskData, classes: tuple[str, ...]) -> np.ndarray:
    """Fold class index -> pooled class index."""
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in td.classes], np.int64)


def pool_tasks(folds: list[TaskData]) -> Pooled:
    f0 = folds[0]
    test_rows = np.concatenate([td.rows["test"] for td in folds])
    groups = {**f0.groups, "test": np.concatenate([td.groups["test"] for td in folds])}
    rows = {**f0.rows, "test": test_rows}
    if f0.categorical:
        train = sorted(set().union(*(td.classes[: td.n_train_classes] for td in folds)))
        extra = sorted(set().union(*(td.classes for td in folds)) - set(train))
        classes = tuple(train) + tuple(extra)
        y = {s: _lut(f0, classes)[f0.y[s]] for s in ("train", "val")}
        y["test"] = np.concatenate([_lut(td, classes)[td.y["test"]] for td in folds])
        chance = np.concatenate([
            np.full(len(td.y["test"]), _lut(td, classes)[int(np.bincount(td.y["train"]).argmax())]) for td in folds
        ])
        td = dataclasses.replace(f0, classes=classes, n_train_classes=len(train), split_column=CV_SPLIT,
                                 rows=rows, y=y, groups=groups)
        return Pooled(td, chance, (float("nan"), float("nan")), tuple(folds))
    y = {**f0.y, "test": np.concatenate([td.y["test"] for td in folds])}
    chance = np.concatenate([np.full(len(td.y["test"]), float(np.mean(td.y["train"]))) for td in folds])
    ranges = np.array([target_range(td.y["train"], td.y["test"]) for td in folds])
    worst = (float(np.nanmax(ranges[:, 0])), float(np.nanmin(ranges[:, 1])))
    td = dataclasses.replace(f0, split_column=CV_SPLIT, rows=rows, y=y, groups=groups)
    return Pooled(td, chance, worst, tuple(folds))


def pool_labels(folds: tuple[TaskData, ...], pooled: TaskData, ys: list[np.ndarray]) -> np.ndarray:
    """Concatenate per-fold test labels or predictions (fold encodings) in the pooled encoding."""
    if not pooled.categorical:
        return np.concatenate([np.asarray(y, np.float64) for y in ys])
    return np.concatenate([_lut(td, pooled.classes)[np.asarray(y, np.int64)] for td, y in zip(folds, ys)])
