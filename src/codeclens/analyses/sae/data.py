"""The rows an SAE study uses: representation values, labels and speaker-disjoint roles.

Roles (Wang et al. §3.1): the SAE trains on one speaker set; the classifier's
split is halved by speaker, one half monitoring SAE loss and the other training
the classifier; the test split scores it. All roles are speaker-disjoint.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from ...errors import CodeclensError
from ...store.reprs import Repr
from ..infotheory import is_missing

ROLES = ("sae", "monitor", "clf", "test")


def _clean_labels(values: np.ndarray) -> np.ndarray:
    """Labels as strings; missing ones (None, NaN, '') become ''."""
    missing = is_missing(values)  # also pandas NA and float32 NaN
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        s = "" if missing[i] else str(v)
        out[i] = "" if s.lower() in ("nan", "none") else s
    return out


@dataclasses.dataclass
class TaskData:
    """Rows (utterances or frames) of one store for one label, with their roles."""

    store: object
    rep: Repr
    label: str
    y: np.ndarray
    """Label (str) of every row of the store at this level; '' where missing."""
    speaker: np.ndarray
    roles: dict
    """role -> sorted row indices"""
    x_all: np.ndarray | None = None
    """Utterance-level values of all utterances (None for frame-level)."""
    relabelled: bool = False
    """Whether label map, grouping or class filter changed any kept row's label or dropped a labelled row."""

    @property
    def frame_level(self) -> bool:
        return not self.rep.pooled

    def values(self, rows: np.ndarray) -> np.ndarray:
        if self.x_all is not None:
            return self.x_all[rows]
        return self.store.materialize(self.rep, np.asarray(rows))

    @property
    def classes(self) -> list[str]:
        return sorted(set(self.y[self.roles["clf"]]) | set(self.y[self.roles["test"]]))


def build_task(
    store, rep: Repr, label: str, classes: tuple[str, ...] = (), split_column: str = "split_spk",
    sae_split: str = "train", clf_split: str = "val", test_split: str = "test",
    monitor_fraction: float = 0.5, max_rows: int = 200_000, seed: int = 0,
    speaker_fractions: tuple[float, ...] = (),
    label_map: tuple[str, ...] = (),
    group=None,
) -> TaskData:
    """``group``: a function label -> group ('' drops), applied after ``label_map``."""
    if len({sae_split, clf_split, test_split}) < 3:
        raise CodeclensError(f"SAE, classifier and test splits must differ (got {sae_split}, {clf_split}, {test_split})")
    utts = store.utterances
    if split_column not in utts.columns:
        raise CodeclensError(f"{store.path}: no split column '{split_column}'; have {', '.join(utts.columns)}")
    if "speaker" not in utts.columns:
        raise CodeclensError(f"{store.path}: utterances have no speaker column (needed for speaker-disjoint splits)")
    frame_level = not rep.pooled
    if frame_level:
        y = _clean_labels(store.frame_column(label))
        split = utts[split_column].astype(str).to_numpy()[store.frame_utt]
        speaker = utts["speaker"].astype(str).to_numpy()[store.frame_utt]
    else:
        y = _clean_labels(store.utterance_column(label))
        split = utts[split_column].astype(str).to_numpy()
        speaker = utts["speaker"].astype(str).to_numpy()
    y_raw = y
    if label_map:
        y = map_labels(y, label_map)
    if group is not None:
        y = np.array([group(v) if v != "" else "" for v in y], dtype=object)
    keep = y != ""
    if speaker_fractions:
        # Re-partition the speakers (per label) instead of reading the split column.
        split = speaker_split(speaker, y, keep, speaker_fractions, (sae_split, clf_split, test_split), seed)
    if classes:
        unknown = sorted(set(classes) - set(y[keep]))
        if unknown:
            raise CodeclensError(f"label '{label}' has no value(s) {', '.join(unknown)}; values: {', '.join(sorted(set(y[keep])))}")
        keep &= np.isin(y, list(classes))
    if not keep.any():
        raise CodeclensError(f"{store.path}: no rows with a '{label}' label")
    _check_speaker_disjoint(speaker, split, keep)
    roles = {
        "sae": np.flatnonzero(keep & (split == sae_split)),
        "clf": np.flatnonzero(keep & (split == clf_split)),
        "test": np.flatnonzero(keep & (split == test_split)),
    }
    roles["monitor"], roles["clf"] = _halve_by_speaker(roles["clf"], speaker, y, monitor_fraction, seed)
    rng = np.random.default_rng(seed)
    for r in ("clf", "test", "monitor"):
        if len(roles[r]) > max_rows:  # frame level: classifier rows are a seeded subsample
            roles[r] = np.sort(rng.choice(roles[r], max_rows, replace=False))
    for r, name in (("sae", sae_split), ("clf", clf_split), ("test", test_split)):
        if len(roles[r]) == 0:
            raise CodeclensError(f"{store.path}: split '{name}' ({r} role) has no labelled rows")
    if len(set(y[roles["clf"]])) < 2:
        raise CodeclensError(
            f"{store.path}: the classifier split '{clf_split}' has only label(s) {sorted(set(y[roles['clf']]))}; "
            f"need at least two classes (use more speakers or other splits)"
        )
    x_all = None if frame_level else store.pooled(rep)
    labelled = y_raw != ""
    relabelled = bool((labelled & ~keep).any() or (y[keep] != y_raw[keep]).any())
    return TaskData(store, rep, label, y, speaker, roles, x_all, relabelled)


def map_labels(y: np.ndarray, mapping: Sequence[str]) -> np.ndarray:
    """Apply ``FROM=TO`` rules: TO empty drops the rows, FROM ``*`` is every other label.

    E.g. Wang et al.'s US vs non-US-UK task: ``US=US, UK=, Irish=, *=non-US-UK``."""
    rules: dict[str, str] = {}
    for item in mapping:
        if "=" not in item:
            raise CodeclensError(f"label map entry '{item}' is not FROM=TO")
        a, b = (t.strip() for t in item.split("=", 1))
        if a in rules:
            raise CodeclensError(f"label map names '{a}' twice")
        rules[a] = b
    default = rules.pop("*", None)
    out = y.copy()
    for i, v in enumerate(y):
        if v == "":
            continue
        out[i] = rules[v] if v in rules else (default if default is not None else v)
    return out


def speaker_split(speaker: np.ndarray, y: np.ndarray, keep: np.ndarray, fractions: Sequence[float],
                  names: Sequence[str], seed: int = 0) -> np.ndarray:
    """Assign whole speakers to ``names`` (SAE, classifier, test) with the given fractions,
    per label (a speaker counts under its most frequent label). Every label with at least
    three speakers gets at least one in each role; smaller labels fill test, then classifier."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise CodeclensError(f"speaker fractions must be three non-negative numbers summing to 1, got {tuple(fractions)}")
    spk_label: dict[str, str] = {}
    for s in np.unique(speaker[keep]):
        vals, counts = np.unique(y[keep & (speaker == s)], return_counts=True)
        spk_label[s] = vals[np.argmax(counts)]
    rng = np.random.default_rng([seed, 2])
    role: dict[str, str] = {}
    for lab in sorted(set(spk_label.values())):
        group = rng.permutation(sorted(s for s, l in spk_label.items() if l == lab)).tolist()
        n = len(group)
        n_test = max(1, int(round(fractions[2] * n))) if n >= 1 else 0
        n_clf = max(1, int(round(fractions[1] * n))) if n >= 2 else 0
        n_test, n_clf = min(n_test, n), min(n_clf, max(n - n_test, 0))
        if n >= 3 and n - n_test - n_clf < 1:  # keep one speaker for the SAE
            if n_clf > 1:
                n_clf -= 1
            else:
                n_test -= 1
        for i, s in enumerate(group):
            role[s] = names[2] if i < n_test else (names[1] if i < n_test + n_clf else names[0])
    return np.array([role.get(s, "") for s in speaker], dtype=object)


def _check_speaker_disjoint(speaker: np.ndarray, split: np.ndarray, keep: np.ndarray) -> None:
    seen: dict[str, str] = {}
    for spk, sp in zip(speaker[keep], split[keep]):
        if seen.setdefault(spk, sp) != sp:
            raise CodeclensError(
                f"speaker '{spk}' is in splits '{seen[spk]}' and '{sp}'; the SAE study needs a "
                f"speaker-disjoint split column (e.g. split_spk)"
            )


def _halve_by_speaker(rows: np.ndarray, speaker: np.ndarray, y: np.ndarray, fraction: float, seed: int):
    """Move ``fraction`` of the speakers of each label (rounded down) to the monitor role."""
    if fraction <= 0 or len(rows) == 0:
        return rows[:0], rows
    spk = speaker[rows]
    spk_label: dict[str, str] = {}
    for s in np.unique(spk):
        vals, counts = np.unique(y[rows][spk == s], return_counts=True)
        spk_label[s] = vals[np.argmax(counts)]
    rng = np.random.default_rng([seed, 1])
    monitor: set[str] = set()
    for lab in sorted(set(spk_label.values())):
        group = sorted(s for s, l in spk_label.items() if l == lab)
        n = int(np.floor(fraction * len(group)))
        monitor.update(rng.permutation(group)[:n].tolist())
    is_mon = np.isin(spk, list(monitor))
    return rows[is_mon], rows[~is_mon]
