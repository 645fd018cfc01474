"""Control tasks (Hewitt & Liang 2019) and selectivity.

A control task keeps the input "types" of the real task but gives each type a
random label, following the train label distribution (see :func:`control_labels`).
A probe that scores well on it is memorising types, not reading the attribute;
selectivity (see :func:`selectivity`) is how much better it does on the task.

Types:
- ``code``: the code of ``layer:k`` (for ``cumulative:k`` the tuple of codes
  1..k, for ``latent`` the tuple of all codes): the analogue of a word type,
  i.e. what a probe could memorise from the input identity alone;
- ``type``: the phone type of the frame (needs a ``phone`` column).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ...errors import CodeclensError
from ...store import Repr, Store
from ..framestream import codes_at


def code_types(store: Store, rep: Repr, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer type of each row per split: its code (layer) or code tuple (cumulative, latent)."""
    if rep.kind in ("layer", "codes"):
        return {s: codes_at(store, r, [rep.layer - 1])[:, 0] for s, r in rows.items()}
    upto = rep.layer if rep.kind == "cumulative" else store.n_layers
    splits = list(rows)
    allc = np.concatenate([codes_at(store, rows[s], range(upto)) for s in splits])
    _, inv = np.unique(allc, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    out, a = {}, 0
    for s in splits:
        out[s] = inv[a : a + len(rows[s])]
        a += len(rows[s])
    return out


_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd: multiplying by it permutes the 64-bit integers


def _tuple_hash(codes: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row of ``codes [m, k]``: equal tuples hash equal (distinct ones collide rarely)."""
    h = np.zeros(len(codes), np.uint64)
    for j in range(codes.shape[1]):
        h += codes[:, j].astype(np.uint64) + np.uint64(1)
        h *= _MIX
        h ^= h >> np.uint64(29)
    return h


def code_coverage_bound(store: Store, rep: Repr, rows: dict[str, np.ndarray], chunk: int = 1 << 18) -> float:
    """An upper bound on :func:`run.control_coverage` of the code tuples of ``rep`` (cumulative, latent):
    the share of test rows whose tuple's hash occurs among the train rows' hashes.

    Equal tuples hash equal, so every covered test row counts and a collision can only add one: the bound
    is at least the coverage, and below the threshold the control is refused exactly as from
    :func:`code_types`. That sorts all rows' tuples (``np.unique`` of ``[rows, k]`` codes: about 100 bytes
    a frame at its peak, 2 GB on 16 M frames of ``cumulative:8``); this holds 8 bytes per train row."""
    upto = rep.layer if rep.kind == "cumulative" else store.n_layers
    tr, te = np.asarray(rows["train"]), np.asarray(rows["test"])
    if not len(te):
        return float("nan")
    seen = np.empty(len(tr), np.uint64)
    for a in range(0, len(tr), chunk):
        seen[a : a + chunk] = _tuple_hash(codes_at(store, tr[a : a + chunk], range(upto)))
    seen.sort()
    hit = 0
    for a in range(0, len(te), chunk):
        h = _tuple_hash(codes_at(store, te[a : a + chunk], range(upto)))
        i = np.minimum(np.searchsorted(seen, h), max(len(seen) - 1, 0))
        hit += int(np.count_nonzero(seen[i] == h)) if len(seen) else 0
    return hit / len(te)


class CodeLabels(Mapping):
    """Control labels of a ``layer:k`` / ``codes:k`` code control, made per split when read:
    ``table[code of each row]``, the codes read from the store again each time.

    A run holds one control per layer and task until the task is evaluated; as arrays that was 4 bytes
    per labelled frame and layer, the largest per-frame term of a default layer:k run."""

    def __init__(self, store: Store, layer: int, rows: dict[str, np.ndarray], table: np.ndarray):
        self.store, self.layer, self.rows, self.table = store, layer, rows, table

    def __getitem__(self, split: str) -> np.ndarray:
        return self.table[codes_at(self.store, self.rows[split], [self.layer - 1])[:, 0]]

    def __iter__(self):
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


def phone_types(store: Store, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if "phone" not in store.frames.columns:
        raise CodeclensError(f"{store.path}: control 'type' needs a phone column; use --control code or none")
    ph = store.frames["phone"].astype(str).to_numpy()
    _, inv = np.unique(ph, return_inverse=True)
    return {s: inv[r] for s, r in rows.items()}


def control_labels(types: dict[str, np.ndarray], y_train: np.ndarray, seed: int) -> dict[str, np.ndarray]:
    """Each type gets one random label; every row takes its type's label.

    Types are put in random order and laid end to end by their train frequency;
    a type takes the train label found at the midpoint of its stretch in the
    sorted train labels. So the assignment is random, yet the control labels
    follow the task's label distribution (not just in expectation), and a
    representation without information scores the same on both (selectivity ~ 0).
    Types never seen in train draw a label from the train labels.
    """
    table = control_table(types, y_train, seed)
    return {s: table[t] for s, t in types.items()}


def control_table(types: dict[str, np.ndarray], y_train: np.ndarray, seed: int) -> np.ndarray:
    """The label of every type (see :func:`control_labels`)."""
    n_types = int(max((t.max() for t in types.values() if len(t)), default=-1)) + 1
    y_sorted = np.sort(np.asarray(y_train))
    return y_sorted[control_ranks(np.bincount(types["train"], minlength=n_types), len(y_sorted), seed)]


def control_table_counts(freq: np.ndarray, class_counts: np.ndarray, seed: int) -> np.ndarray:
    """:func:`control_table` of class labels from counts: ``freq`` the train rows of every type
    (its length is the number of types), ``class_counts`` the train rows of every class. The i-th
    sorted train label is the class whose stretch of the cumulative counts holds i, so the table is
    the one the rows would give, without the rows."""
    ends = np.cumsum(np.asarray(class_counts, np.int64))
    n = int(ends[-1]) if len(ends) else 0
    return np.searchsorted(ends, control_ranks(freq, n, seed), side="right").astype(np.int32)


def control_ranks(freq: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rank (in the sorted train labels) of the label of every type, from the train rows per type
    ``freq`` and the number of train rows ``n``: the control table is ``sorted_labels[ranks]``."""
    rng = np.random.default_rng(seed)
    n_types = len(freq)
    freq = np.asarray(freq).astype(np.float64)
    order = rng.permutation(n_types)
    mid = np.cumsum(freq[order]) - freq[order] / 2
    ranks = np.empty(n_types, np.int64)
    ranks[order] = np.clip((mid / max(freq.sum(), 1) * n).astype(np.int64), 0, n - 1)
    unseen = freq == 0
    # rng.choice(n) draws the indices rng.choice(sorted_labels) would, so both forms give one table.
    ranks[unseen] = rng.choice(n, size=int(unseen.sum()))
    return ranks


def selectivity(task_value, control_value, task_chance: float = 0.0, control_chance: float = 0.0) -> np.ndarray:
    """Gain of the task over its chance minus gain of the control over its chance.

    With equal chance levels this is Hewitt & Liang's task - control. Subtracting
    each one's own baseline (majority class; train-mean predictor for regression)
    keeps a shift between train and test labels (e.g. held-out speakers' F0)
    from showing up as selectivity.
    """
    return (np.asarray(task_value) - task_chance) - (np.asarray(control_value) - control_chance)
