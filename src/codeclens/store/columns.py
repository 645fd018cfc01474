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
    if v.dtype.kind == "b":  # as np.unique would encode it (sorted present values), without the sort
        present = np.array([False, True])[[bool((~v).any()), bool(v.any())]]
        codes = v.astype(np.int32) if len(present) == 2 else np.zeros(len(v), np.int32)
        return LabelColumn(codes, present.astype(str), None)
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
        import pyarrow.parquet as pq

        return _arrow_chunk(pq.read_table(store.path / layout.FRAMES, columns=[name]).column(name).combine_chunks())
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


CHUNK_ROWS = 1 << 20
"""Frames per chunk of :func:`iter_frame_labels` (a few MB per column of transient arrays)."""


class _GlobalNames:
    """Category names met chunk by chunk, in first-seen order: chunk codes -> global codes."""

    def __init__(self):
        self.index: dict[str, int] = {}

    def encode(self, local: LabelColumn) -> np.ndarray:
        gid = np.asarray([self.index.setdefault(str(n), len(self.index)) for n in local.names], np.int32)
        if not len(gid):
            return np.full(len(local.codes), -1, np.int32)
        return np.where(local.codes >= 0, gid[np.maximum(local.codes, 0)], -1).astype(np.int32)

    @property
    def names(self) -> np.ndarray:
        return np.asarray(list(self.index), dtype=object).astype(str) if self.index else np.zeros(0, str)


def _arrow_chunk(col) -> LabelColumn:
    """One record batch's column encoded as :func:`frame_label` encodes the whole column."""
    import pyarrow as pa

    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_dictionary(t):
        enc = col if pa.types.is_dictionary(t) else col.dictionary_encode()
        names = np.asarray(enc.dictionary.to_pylist(), dtype=object).astype(str)
        codes = enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int32)
        empty = np.flatnonzero(np.char.str_len(names) == 0) if len(names) else np.zeros(0, np.int64)
        if len(empty):
            codes[np.isin(codes, empty)] = -1
        return LabelColumn(codes, names, None)
    if pa.types.is_floating(t):
        return LabelColumn(None, None, col.to_numpy(zero_copy_only=False))
    return _from_values(col.to_numpy(zero_copy_only=False))


def frames_file(path, **kw):
    """``frames.parquet`` opened for streaming, without pre-buffering.

    pyarrow's default ``pre_buffer=True`` keeps the column chunks of every row group read so far
    until the file is closed: a streamed pass held a few bytes per frame of the whole corpus
    (F0 and voicing: 23 MB at 1 M frames, 104 MB at 16 M; Arrow's pool peak of an F0 probe run
    60 MB at 4 M, 137 MB at 16 M). Without it the pool stays at one row group's batch."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, pre_buffer=False, **kw)


def _utt_of_range(ends: np.ndarray, a: int, b: int) -> np.ndarray:
    """int32 utterance row of frames ``a..b-1`` (``ends``: exclusive end frame of every utterance), by one
    repeat over the utterances the range touches (a searchsorted per frame cost a binary search each)."""
    if b <= a:
        return np.zeros(0, np.int32)
    u0, u1 = int(np.searchsorted(ends, a, side="right")), int(np.searchsorted(ends, b - 1, side="right"))
    starts = np.r_[a, ends[u0:u1]]
    stops = np.r_[ends[u0:u1], b]
    return np.repeat(np.arange(u0, u1 + 1, dtype=np.int32), stops - starts)


class FrameLabels:
    """Label columns per frame read ``chunk`` frames at a time (frames columns one Parquet record
    batch at a time, utterance columns broadcast per chunk): the chunked form of :func:`frame_label`,
    so no whole-column array (Arrow strings, float64 values, int64 inverses) is ever held.

    Iterating yields ``(a, b, utt, {name: codes or values})`` for frames ``[a, b)``; ``utt`` is the
    utterance row of each of those frames. Categorical codes are int32 into :meth:`names`, which is
    complete once the iteration has ended (first-seen order: the codes differ from
    :func:`frame_label`'s, the names they stand for do not).
    """

    def __init__(self, store, columns, chunk: int = CHUNK_ROWS):
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.store, self.chunk = store, int(chunk)
        self.columns = list(dict.fromkeys(columns))
        fcols = set(frame_column_names(store))
        schema = pq.read_schema(store.path / layout.FRAMES)
        self.frame_cols = [c for c in self.columns if c in fcols]
        self._utt: dict[str, LabelColumn] = {}
        for c in self.columns:
            if c in fcols:
                continue
            if c not in store.utterances.columns:
                raise CodeclensError(
                    f"{store.path}: no label column '{c}'; available: {', '.join(store.label_columns())}")
            self._utt[c] = _from_values(store.utterances[c].to_numpy())
        self.categorical = {c: (self._utt[c].categorical if c in self._utt else
                                not pa.types.is_floating(schema.field(c).type)) for c in self.columns}
        self._names = {c: _GlobalNames() for c in self.frame_cols if self.categorical[c]}

    def names(self, column: str) -> np.ndarray:
        return self._utt[column].names if column in self._utt else self._names[column].names

    def n_names(self, column: str) -> int:
        """Category names met so far (all of them for utterance columns)."""
        return len(self._utt[column].names) if column in self._utt else len(self._names[column].index)

    def utterance_codes(self, column: str) -> np.ndarray | None:
        """int32 code per utterance of an utterance-level column (-1 missing); None for frame columns."""
        lc = self._utt.get(column)
        return None if lc is None or not lc.categorical else lc.codes

    def true_codes(self, column: str) -> np.ndarray:
        """Codes (so far) of the category named ``True`` (a boolean column read as categories)."""
        if column in self._utt:
            return np.flatnonzero(self._utt[column].names == "True")
        i = self._names[column].index.get("True")
        return np.zeros(0, np.int64) if i is None else np.array([i])

    def __iter__(self):
        nf = self.store.utterances["n_frames"].to_numpy().astype(np.int64)
        ends = np.cumsum(nf)
        n = int(ends[-1]) if len(ends) else 0
        if self.frame_cols:
            batches = frames_file(self.store.path / layout.FRAMES).iter_batches(
                batch_size=self.chunk, columns=self.frame_cols)
        else:
            batches = (min(self.chunk, n - a) for a in range(0, n, self.chunk))
        a = 0
        for batch in batches:
            b = a + (batch if isinstance(batch, int) else batch.num_rows)
            utt = _utt_of_range(ends, a, b)
            out = {}
            for c in self.columns:
                if c in self._utt:
                    lc = self._utt[c]
                    out[c] = lc.codes[utt] if lc.categorical else lc.values[utt]
                    continue
                lc = _arrow_chunk(batch.column(self.frame_cols.index(c)))
                out[c] = self._names[c].encode(lc) if lc.categorical else lc.values
            yield a, b, utt, out
            a = b
        if a != n:
            raise CodeclensError(f"{self.store.path}: frames.parquet holds {a} frames but the utterances list {n}")
