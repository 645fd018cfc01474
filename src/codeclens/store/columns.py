"""One label column of a store, read compactly: int32 category codes or a float array.

``Store.frames`` loads every frame column as a pandas frame (string labels as
Python objects, ~60 bytes per frame each). Analyses that need one column of a
large store read it here instead: only that column is read from the Parquet
file, and categorical labels come back as int32 codes into a small array of
names, so a label costs 4 bytes per frame whatever its type.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache

import numpy as np

from ..errors import CodeclensError
from . import layout


@dataclasses.dataclass(frozen=True)
class LabelColumn:
    """A per-row label: ``codes`` into ``names`` (categorical) or ``values`` (numeric)."""

    codes: np.ndarray | None
    """int32 category index per row; -1 = missing (null, empty string, negative integer label)."""
    names: np.ndarray | None
    """Category names (str), in first-seen (dictionary) order; None for numeric columns."""
    values: np.ndarray | None
    """Numeric values per row (float32 or float64; NaN = missing); None for categorical columns."""

    @property
    def categorical(self) -> bool:
        return self.codes is not None

    def __len__(self) -> int:
        return len(self.codes if self.codes is not None else self.values)


@lru_cache(maxsize=64)
def _schema_names(path: str, mtime: float) -> tuple[str, ...]:
    import pyarrow.parquet as pq

    return tuple(pq.read_schema(path).names)


def frame_column_names(store) -> tuple[str, ...]:
    """Columns of the store's frame table, from the Parquet schema (no data read)."""
    p = store.path / layout.FRAMES
    return _schema_names(str(p), p.stat().st_mtime)


def _from_values(v: np.ndarray) -> LabelColumn:
    """Encode an in-memory array the way :func:`frame_label` encodes a Parquet column."""
    import pandas as pd

    v = np.asarray(v)
    if v.dtype.kind in "fc":
        return LabelColumn(None, None, v)
    if v.dtype.kind in "iub":
        ok = v >= 0 if v.dtype.kind == "i" else np.ones(len(v), bool)
        uniq, inv = np.unique(v[ok], return_inverse=True)
        codes = np.full(len(v), -1, np.int32)
        codes[ok] = inv.reshape(-1)
        return LabelColumn(codes, uniq.astype(str), None)
    cat = pd.Categorical(v)
    codes = np.asarray(cat.codes, np.int32)
    names = np.asarray(cat.categories.astype(str))
    empty = np.flatnonzero(np.char.str_len(names.astype(str)) == 0)
    if len(empty):
        codes = np.where(np.isin(codes, empty), -1, codes).astype(np.int32)
    return LabelColumn(codes, names, None)


def frame_label(store, name: str) -> LabelColumn:
    """Label ``name`` per frame: a frames column, or an utterance column broadcast to frames."""
    if name in frame_column_names(store):
        import pyarrow as pa
        import pyarrow.parquet as pq

        col = pq.read_table(store.path / layout.FRAMES, columns=[name]).column(name)
        t = col.type
        if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
            enc = col.combine_chunks() if pa.types.is_dictionary(t) else col.combine_chunks().dictionary_encode()
            names = np.asarray(enc.dictionary.to_pylist(), dtype=object).astype(str)
            codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
            empty = np.flatnonzero(np.char.str_len(names) == 0)
            if len(empty):
                codes[np.isin(codes, empty)] = -1
            return LabelColumn(codes, names, None)
        if pa.types.is_floating(t):
            return LabelColumn(None, None, col.to_numpy())
        return _from_values(col.to_numpy(zero_copy_only=False))
    if name in store.utterances.columns:
        per_utt = _from_values(store.utterances[name].to_numpy())
        nf = store.utterances["n_frames"].to_numpy()
        if per_utt.categorical:
            return LabelColumn(np.repeat(per_utt.codes, nf), per_utt.names, None)
        return LabelColumn(None, None, np.repeat(per_utt.values, nf))
    raise CodeclensError(f"{store.path}: no label column '{name}'; available: {', '.join(store.label_columns())}")


def utterance_label(store, name: str) -> LabelColumn:
    if name not in store.utterances.columns:
        raise CodeclensError(f"{store.path}: no utterance-level column '{name}'; available: "
                             f"{', '.join(store.utterances.columns)}")
    return _from_values(store.utterances[name].to_numpy())


def frame_utt32(store) -> np.ndarray:
    """Utterance row of every frame as int32 (half of ``Store.frame_utt``)."""
    nf = store.utterances["n_frames"].to_numpy()
    return np.repeat(np.arange(len(nf), dtype=np.int32), nf)
