"""Gathering probe rows from a store: labels, splits, and whitening of features.

A task is a label column. Its rows (frames, or utterances at utterance level)
are those with a usable label (F0: voiced frames with a positive value; NaN and
empty labels are never used), cut by an utterance-level split column so that
all frames of one utterance fall in one split.
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import torch

from ...errors import CodeclensError
from ...store import Repr, Store
from ...store import columns
from ...store.columns import FrameLabels, frame_column_names, utterance_label
from ...labels.splits import too_few_speakers
from .config import ProbeConfig

SPLITS = ("train", "val", "test")
F0_COLUMNS = ("f0_hz", "f0")
SPEAKER_TASKS = ("speaker",)
DISJOINT_TASKS = ("accent",)


@dataclasses.dataclass(frozen=True)
class TaskData:
    """Rows, labels and utterance groups of one task on one store, per split."""

    task: str
    """The task as asked (e.g. f0)."""
    column: str
    """The label column used (e.g. f0_hz)."""
    categorical: bool
    """Classification (True) or regression."""
    classes: tuple[str, ...]
    """Class names: the train classes first, then classes seen only in val/test."""
    n_train_classes: int
    """Classes a probe can predict (those present in train)."""
    split_column: str
    """split_utt or split_spk."""
    level: str
    """frame or utterance."""
    is_f0: bool
    """F0 in Hz: also report MAE in cents."""
    rows: dict[str, np.ndarray]
    """Frame (or utterance) indices per split, ascending (int32 below 2**31 rows)."""
    y: dict[str, np.ndarray]
    """Encoded labels (int32) or values (float32) per split."""
    groups: dict[str, np.ndarray]
    """Utterance index (int32) of each row per split (for bootstrap)."""
    open_set: bool = False
    """Test classes are all unseen in train (e.g. speaker ID on held-out speakers): evaluated by
    identifying test rows among the test classes with the probe's class scores as embeddings."""

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def resolve_column(store: Store, task: str) -> str:
    """``f0`` means the store's F0 column in Hz (f0_hz, else f0)."""
    cols = set(frame_column_names(store)) | set(store.utterances.columns)
    if task == "f0":
        for c in F0_COLUMNS:
            if c in cols:
                return c
    return task


def default_split(task: str, column: str) -> str:
    if task in SPEAKER_TASKS or column in SPEAKER_TASKS:
        return "split_utt"
    return "split_spk"


def split_column(task: str, column: str, cfg: ProbeConfig) -> str:
    if cfg.split == "auto":
        return default_split(task, column)
    col = {"utt": "split_utt", "spk": "split_spk"}[cfg.split]
    if col == "split_utt" and (task in DISJOINT_TASKS or column in DISJOINT_TASKS):
        raise CodeclensError(f"task '{task}' must be evaluated on held-out speakers: use --split spk (or auto)")
    return col


def _index_dtype(n: int):
    return np.int32 if n < 2**31 else np.int64


def gather_task(store: Store, task: str, cfg: ProbeConfig, seed: int | None = None,
                split: tuple[str, np.ndarray] | None = None, chunk: int | None = None) -> TaskData:
    """Rows and labels of ``task`` per split; raises CodeclensError for unusable tasks.
    ``split`` = (name, split of every utterance) replaces the store's split column (cross-validation folds).

    Memory: frame labels are read ``chunk`` frames at a time (default ``store.columns.CHUNK_ROWS``;
    :class:`FrameLabels`) and only the usable rows are kept, as int32 rows and groups, int32 class
    labels or float32 targets: a task costs about 12 bytes per usable frame, and no whole-column
    array is ever built.
    """
    column = resolve_column(store, task)
    level = cfg.level
    is_f0 = column in F0_COLUMNS or task == "f0"
    if level == "frame":
        want = [column] + (["voiced"] if is_f0 and "voiced" in frame_column_names(store) else [])
        labels = FrameLabels(store, want, columns.CHUNK_ROWS if chunk is None else chunk)
        categorical = labels.categorical[column]

        def voiced(v: np.ndarray) -> np.ndarray:  # a boolean column is read as categories
            return np.isin(v, labels.true_codes("voiced")) if labels.categorical["voiced"] else v > 0
        n_rows = int(store.utterances["n_frames"].sum())
    else:
        if column not in store.utterances.columns:
            raise CodeclensError(
                f"{store.path}: '{column}' is not an utterance-level column; utterance-level tasks: "
                f"{', '.join(c for c in store.utterances.columns if c not in ('id', 'path', 'n_frames', 'frame_offset'))}"
            )
        lab = utterance_label(store, column)
        categorical = lab.categorical
        n_rows = store.n_utterances
        want, labels = [column], [(0, n_rows, np.arange(n_rows, dtype=np.int32),
                                   {column: lab.codes if categorical else lab.values})]
    if is_f0 and categorical:
        raise CodeclensError(f"{store.path}: F0 column '{column}' is not numeric")
    scol, split_utts = split if split is not None else (split_column(task, column, cfg), None)
    if split_utts is None:
        if scol not in store.utterances.columns:
            raise CodeclensError(f"{store.path}: no split column '{scol}' in the store's utterances")
        split_utts = store.utterances[scol].astype(str).to_numpy()
    # The split is an utterance property: compare strings per utterance, index the split by utterance.
    split_utt = np.asarray(split_utts).astype(str)
    split_of = np.full(len(split_utt), -1, np.int8)
    for k, s in enumerate(SPLITS):
        split_of[split_utt == s] = k
    idt = _index_dtype(n_rows)
    # Outputs preallocated at their bound (every row of the split's utterances) and filled in order:
    # pages past the usable rows are never touched, and the final shrink gives them back. Appending
    # per-chunk pieces and concatenating held every row twice, and the freed pieces, interleaved on
    # the heap, were not returned to the system.
    per_utt = store.utterances["n_frames"].to_numpy() if level == "frame" else np.ones(n_rows, np.int64)
    vdt = np.int32 if categorical else np.float32
    out = {}
    for k, s in enumerate(SPLITS):
        cap = int(per_utt[split_of == k].sum())
        out[s] = (np.empty(cap, idt), np.empty(cap, np.int32), np.empty(cap, vdt))
    filled = dict.fromkeys(SPLITS, 0)
    n_ok = 0
    for a, _, utt, cols in labels:
        x = cols[column]
        if categorical:
            ok = x >= 0
        else:
            ok = ~np.isnan(x)
        if is_f0:
            with np.errstate(invalid="ignore"):
                ok &= x > 0
            if len(want) > 1:
                ok &= voiced(cols["voiced"])
        n_ok += int(ok.sum())
        sp = split_of[utt]
        for k, s in enumerate(SPLITS):
            sel = np.flatnonzero(ok & (sp == k))
            i, j = filled[s], filled[s] + len(sel)
            r, g, v = out[s]
            r[i:j], g[i:j], v[i:j] = sel + a, utt[sel], x[sel]
            filled[s] = j
        del x, ok, sp, cols
    for s, arrs in out.items():
        for arr in arrs:
            arr.resize(filled[s], refcheck=False)  # in place (realloc): nothing else refers to them
    rows, groups, vals = ({s: out[s][i] for s in SPLITS} for i in range(3))
    del out
    if cfg.max_train_frames is not None and len(rows["train"]) > cfg.max_train_frames:
        keep = _subsample_by_group(groups["train"], cfg.max_train_frames, cfg.seed if seed is None else seed)
        rows["train"], groups["train"], vals["train"] = rows["train"][keep], groups["train"][keep], vals["train"][keep]
    for s in ("train", "test"):
        if not len(rows[s]):
            raise CodeclensError(
                f"{store.path}: task '{task}' has no usable {s} rows in {scol} "
                f"({n_ok} labelled rows in all; check the label column and the splits)"
            )
    if categorical:
        raw = vals
        names = labels.names(column) if level == "frame" else lab.names
        n_names = len(names)
        seen_train = np.bincount(raw["train"], minlength=n_names) > 0
        seen_other = (np.bincount(raw["val"], minlength=n_names) + np.bincount(raw["test"], minlength=n_names)) > 0
        train_classes = np.sort(names[seen_train])
        if len(train_classes) < 2:
            raise CodeclensError(
                f"{store.path}: task '{task}' has one class ({train_classes[0]!s}) in the train split; nothing to probe"
            )
        extra = np.sort(names[seen_other & ~seen_train])
        classes = np.concatenate([train_classes, extra])
        # Category code -> class index (train classes sorted, then the others sorted).
        lut = np.full(n_names, -1, np.int32)
        used = np.flatnonzero(seen_train | seen_other)
        lut[used] = _encode(names[used], train_classes, extra)
        y = {s: np.take(lut, raw[s], out=raw[s]) for s in SPLITS}  # in place: codes are not needed after
        open_set = not (y["test"] < len(train_classes)).any()
        if open_set and scol != "split_spk":
            raise CodeclensError(
                f"{store.path}: no test label of task '{task}' occurs in train ({scol}); nothing to evaluate"
            )
        if open_set and len(np.unique(y["test"])) < 2:
            raise CodeclensError(
                f"{store.path}: open-set task '{task}' needs at least 2 test classes in {scol}"
            )
        _check_val(store, task, scol, rows, cfg)
        return TaskData(task, column, True, tuple(str(c) for c in classes), len(train_classes), scol, level,
                        is_f0, rows, y, groups, open_set)
    y = vals
    if np.ptp(y["train"]) == 0:
        raise CodeclensError(f"{store.path}: task '{task}' is constant in the train split; nothing to probe")
    _check_val(store, task, scol, rows, cfg)
    return TaskData(task, column, False, (), 0, scol, level, is_f0, rows, y, groups)


def _encode(labels: np.ndarray, train_classes: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Index into ``concat(train_classes, extra)`` (both sorted, disjoint)."""
    out = np.searchsorted(train_classes, labels).astype(np.int32)
    inside = (out < len(train_classes)) & (train_classes[np.minimum(out, len(train_classes) - 1)] == labels)
    if not inside.all():
        out[~inside] = len(train_classes) + np.searchsorted(extra, labels[~inside])
    return out


def check_split_speakers(store: Store, task: str, cfg: ProbeConfig) -> None:
    """One clear error, before any work, when the task's speaker-disjoint split lacks a split it
    needs (train, test, and val to choose among several --l2) because the store has too few speakers."""
    u = store.utterances
    if "speaker" not in u.columns:
        return
    scol = split_column(task, resolve_column(store, task), cfg)
    few = too_few_speakers(int(u["speaker"].nunique()), scol) if scol == "split_spk" else ""
    if not few or scol not in u.columns:
        return
    present = set(u[scol].astype(str))
    need = {"train", "test"} | ({"val"} if len(cfg.l2) > 1 else set())
    if need - present:
        raise CodeclensError(f"{store.path}: task '{task}': {few}")


def _check_val(store: Store, task: str, scol: str, rows: dict[str, np.ndarray], cfg: ProbeConfig) -> None:
    if not len(rows["val"]) and len(cfg.l2) > 1:
        raise CodeclensError(
            f"{store.path}: task '{task}' has an empty val split in {scol}; give one --l2 value to skip validation"
        )


def _subsample_by_group(g: np.ndarray, budget: int, seed: int) -> np.ndarray:
    """Mask of rows (utterance ``g`` each): whole utterances in random order until ``budget`` rows
    (keeps the utterance structure)."""
    uniq, counts = np.unique(g, return_counts=True)
    order = np.random.default_rng(seed).permutation(len(uniq))
    keep = uniq[order[np.cumsum(counts[order]) <= budget]]
    if not len(keep):
        keep = uniq[order[:1]]
    return np.isin(g, keep)


# -- features ----------------------------------------------------------------
def iter_features(store: Store, rep: Repr, rows: np.ndarray, level: str, chunk: int = 65536) -> Iterator[np.ndarray]:
    """Raw feature chunks ``[m, D]`` (float32) for ``rows``, streamed from the store."""
    if level == "utterance":
        base = Repr(rep.kind, rep.layer, True)
        x = store.values(base)
        for a in range(0, len(rows), chunk):
            yield np.asarray(x[rows[a : a + chunk]], np.float32)
        return
    for _, x in store.iter_batches(Repr(rep.kind, rep.layer, False), chunk, rows=rows):
        yield np.asarray(x, np.float32)


def feature_dim(store: Store, rep: Repr) -> int:
    if rep.kind == "codes":
        return store.codebook_sizes[rep.layer - 1]
    return int(store.latent.shape[1]) if rep.kind == "latent" else store.dim


@dataclasses.dataclass(frozen=True)
class Whitener:
    """z = (x - mean) @ proj: PCA whitening fitted on train rows (unit variance per kept direction)."""

    mean: np.ndarray
    """[D] train mean."""
    proj: np.ndarray
    """[D, r] eigenvectors divided by sqrt(eigenvalue)."""

    @property
    def dim(self) -> int:
        return int(self.proj.shape[1])

    def transform(self, x: np.ndarray) -> np.ndarray:
        # torch rather than numpy: mixing OpenBLAS' thread pool with torch's OpenMP one
        # oversubscribes a small CPU (a 64 x 64 eigh went from 1 to 40 ms).
        xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        z = (xt - torch.from_numpy(self.mean)) @ torch.from_numpy(self.proj)
        return z.to(torch.float32).numpy()


def whitener_from_moments(n: float, s: np.ndarray, ss: np.ndarray, rel_eps: float = 1e-7) -> Whitener:
    """From the total weight, weighted sum and weighted sum of outer products.

    Directions with (relative) variance below ``rel_eps`` are dropped: they carry
    nothing in train, and scaling them up would only amplify rounding noise.
    """
    s_t, ss_t = torch.as_tensor(s, dtype=torch.float64), torch.as_tensor(ss, dtype=torch.float64)
    mean = s_t / n
    cov = ss_t / n - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh((cov + cov.T) / 2)
    top = max(float(evals[-1]), 0.0)
    keep = evals > rel_eps * top if top > 0 else torch.zeros_like(evals, dtype=torch.bool)
    if not bool(keep.any()):
        # A constant representation: keep one zero direction so shapes stay valid.
        return Whitener(mean.numpy(), np.zeros((len(mean), 1)))
    return Whitener(mean.numpy(), (evecs[:, keep] / evals[keep].sqrt()).numpy())


def weighted_whitener(x: np.ndarray, w: np.ndarray) -> Whitener:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float64)
    wt = torch.as_tensor(np.asarray(w), dtype=torch.float64)
    return whitener_from_moments(float(wt.sum()), wt @ xt, (xt * wt[:, None]).T @ xt)


def streamed_whitener(chunks: Iterator[np.ndarray]) -> Whitener:
    n, s, ss = 0.0, None, None
    for x in chunks:
        x = torch.as_tensor(np.asarray(x), dtype=torch.float64)
        if s is None:
            s, ss = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros((x.shape[1], x.shape[1]), dtype=torch.float64)
        n += len(x)
        s += x.sum(0)
        ss += x.T @ x
    if s is None or n == 0:
        raise CodeclensError("no train rows to fit the whitening on")
    return whitener_from_moments(n, s, ss)
