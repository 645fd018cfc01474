"""Frame labels and code x label counts streamed from a store, in chunks of frames.

The ``tokens`` and ``mi`` analyses only need co-occurrence counts (and, for the
variational MI bracket, a bounded subsample of frames), so nothing here holds a
per-frame array of the whole corpus: label columns are read from
``frames.parquet`` one record batch at a time (string columns read as parquet
dictionaries, so a phone costs an int32 index per frame of the batch, never a
Python or Arrow string), utterance columns are broadcast per chunk from the
utterance table, codes are read block by block from ``codes.npy`` (file reads:
:mod:`codeclens.store.codesio`, re-exported here), and each
chunk is counted with one ``np.bincount`` per layer. Peak memory is set by the
chunk size and the count tables ``[layers, codes, classes]``, not by the number
of frames; results do not depend on the chunk size (samples are keyed on frame
rows, not on the order frames arrive in).

Missing labels never become a class: None, NaN, empty strings and the integer
``-1`` ("no unit": unaligned frames, failed labelling) are dropped.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from ..store import layout
from ..store.columns import frames_file
from ..store.codesio import CHUNK_FRAMES, code_rows, codes_at, utt_of_rows, utt_of_rows_at, utterance_ends  # noqa: F401 - re-exported
from .infotheory import missing_label

# CHUNK_FRAMES (the store's, 256 k frames per streamed chunk): about 2 MB per transient array and byte
# per frame; measured peak RSS of ``mi --no-club`` on 4 M frames 476 MB against 581 MB with 1 M-frame
# chunks, at the same speed.


# -- columns -------------------------------------------------------------------------
def frame_column_names(store: Any) -> list[str]:
    """Columns of ``frames.parquet``, read from the schema (the table itself is not loaded)."""
    import pyarrow.parquet as pq

    return list(pq.read_schema(store.path / layout.FRAMES).names)


def column_source(store: Any, name: str) -> str:
    """``frame`` or ``utterance``: where a label column lives (frames first, like ``Store.frame_column``)."""
    frame_cols = frame_column_names(store)
    if name in frame_cols:
        return "frame"
    if name in store.utterances.columns:
        return "utterance"
    skip = {"utt", "frame", "time", "frame_offset", "n_frames", "path", "id"}
    avail = [c for c in dict.fromkeys([*frame_cols, *store.utterances.columns]) if c not in skip]
    raise CodeclensError(f"{store.path}: no label column '{name}'; available: {', '.join(avail)}")


def column_is_float(store: Any, name: str) -> bool:
    """True when the column holds floating-point values (a measurement, or ids upcast by NaN)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if column_source(store, name) == "utterance":
        return store.utterances[name].dtype.kind == "f"
    return pa.types.is_floating(pq.read_schema(store.path / layout.FRAMES).field(name).type)


@dataclasses.dataclass(frozen=True)
class Factorized:
    """A chunk of one column as ``uniques[index]``; index -1 is a null."""

    index: np.ndarray
    uniques: np.ndarray


def _factorize_arrow(arr) -> Factorized:
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    d = arr if pa.types.is_dictionary(arr.type) else pc.dictionary_encode(arr)
    # int32 indices gather as well as int64 ones; the null index -1 picks LabelEncoder's trailing -1
    idx = d.indices.fill_null(-1).to_numpy(zero_copy_only=False)
    return Factorized(idx, np.asarray(d.dictionary.to_numpy(zero_copy_only=False)))


def _frames_file(store: Any, factorized: Sequence[str]):
    """``frames.parquet`` opened for streaming.

    Without pre-buffering (:func:`..store.columns.frames_file`). String columns to be factorized are
    read as their parquet dictionaries: no string per frame is ever built (about 20x faster than
    decoding and re-encoding them).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = store.path / layout.FRAMES
    schema = pq.read_schema(path)
    strings = [c for c in factorized if c in schema.names and
               (pa.types.is_string(t := schema.field(c).type) or pa.types.is_large_string(t))]
    return frames_file(path, read_dictionary=strings or None)


def iter_chunks(
    store: Any, columns: Sequence[str], raw: Sequence[str] = (), chunk: int | None = None
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """Yield ``(a, b, values)`` for consecutive frame ranges ``[a, b)`` of at most ``chunk`` frames
    (default :data:`CHUNK_FRAMES`, read when called).

    ``values[col]`` is a :class:`Factorized` chunk for the columns in ``columns``
    and a float64 array for those in ``raw`` (measurements such as F0).
    """
    chunk = int(chunk or CHUNK_FRAMES)
    wanted = list(dict.fromkeys([*columns, *raw]))
    src = {c: column_source(store, c) for c in wanted}
    fcols = [c for c in wanted if src[c] == "frame"]
    u = store.utterances
    ufact = {c: pd.factorize(u[c], use_na_sentinel=True) for c in wanted if src[c] == "utterance" and c in columns}
    uraw = {c: pd.to_numeric(u[c], errors="coerce").to_numpy(np.float64) for c in raw if src[c] == "utterance"}
    ends = utterance_ends(store)
    n = int(ends[-1]) if len(ends) else 0

    def batches():
        if fcols:
            pf = _frames_file(store, [c for c in fcols if c in columns and c not in raw])
            yield from pf.iter_batches(batch_size=chunk, columns=fcols)
        else:
            for a in range(0, n, chunk):
                yield min(chunk, n - a)

    a = 0
    for batch in batches():
        m = batch if isinstance(batch, int) else batch.num_rows
        b = a + m
        out: dict[str, Any] = {}
        utt = utt_of_rows(ends, a, b) if (ufact or uraw) else None
        for c in wanted:
            if src[c] == "frame":
                col = batch.column(fcols.index(c))
                if c in columns:
                    out[c] = _factorize_arrow(col)
                if c in raw:
                    out["raw:" + c] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
            else:
                if c in columns:
                    codes, uniq = ufact[c]
                    out[c] = Factorized(np.asarray(codes, np.int64)[utt], np.asarray(uniq, dtype=object))
                if c in raw:
                    out["raw:" + c] = uraw[c][utt]
        yield a, b, out
        a = b
    if a != n:
        raise CodeclensError(f"{store.path}: frames.parquet holds {a} frames but the utterances list {n}")


# -- label ids -----------------------------------------------------------------------
class LabelEncoder:
    """Global integer ids of label values met chunk by chunk (-1: missing).

    Floats with more than ``max_classes`` distinct values that are not all whole
    numbers are a measurement (F0, loudness), not a label: :class:`CodeclensError`
    (``real_message``), raised as soon as that is certain so a continuous column
    never builds a dictionary per frame. Whole-number floats (ids upcast by NaN) stay labels.
    """

    def __init__(self, name: str = "label", max_classes: int = 20, real_message: str = ""):
        self.index: dict[Any, int] = {}
        self.values: list[Any] = []
        self.max_classes = max_classes
        self.name = name
        self.real_message = real_message or f"label column '{name}' is real-valued, not a discrete label"
        self.nonwhole = False

    @property
    def n(self) -> int:
        return len(self.values)

    def ids(self, f: Factorized) -> np.ndarray:
        """Global ids per row of a factorized chunk (-1 where missing)."""
        g = np.empty(len(f.uniques) + 1, dtype=np.int64)
        g[-1] = -1  # the null index
        # A dictionary may hold values no row of the chunk uses (a parquet row group's dictionary read
        # in smaller batches, unused pandas categories): only values that occur become classes.
        used = np.zeros(len(f.uniques) + 1, dtype=bool)
        used[f.index] = True
        for i, v in enumerate(f.uniques):
            if not used[i]:
                g[i] = -1
                continue
            v = v.item() if isinstance(v, np.generic) else v
            if missing_label(v):
                g[i] = -1
                continue
            j = self.index.get(v)
            if j is None:
                j = self.index[v] = len(self.values)
                self.values.append(v)
                if isinstance(v, float) and not v.is_integer():
                    self.nonwhole = True
                if self.nonwhole and len(self.values) > self.max_classes:
                    raise CodeclensError(self.real_message)
            g[i] = j
        return g[f.index]

    def finish(self) -> tuple[np.ndarray, np.ndarray]:
        """``(classes, new_id_of_old_id)``: classes sorted (as strings when the values are mixed)."""
        vals = self.values
        numeric = all(isinstance(v, (bool, int, float, np.number)) for v in vals)
        order = sorted(range(len(vals)), key=(lambda i: vals[i]) if numeric else (lambda i: str(vals[i])))
        new = np.empty(len(vals), dtype=np.int64)
        new[order] = np.arange(len(vals))
        classes = np.array([vals[i] for i in order]) if numeric else np.array([str(vals[i]) for i in order])
        return classes, new


# -- counting ------------------------------------------------------------------------
class CodeCounter:
    """Accumulates ``counts[layer][code, label]`` with one bincount per layer and chunk."""

    def __init__(self, layers: Sequence[int], n_codes: Sequence[int]):
        self.layers = list(layers)
        self.n_codes = [int(k) for k in n_codes]
        self.counts = [np.zeros((k, 0), dtype=np.int64) for k in self.n_codes]

    def add(self, codes: np.ndarray, ids: np.ndarray, n_classes: int) -> None:
        """``codes [n, len(layers)]`` of the chunk's rows with a label, ``ids`` their label ids."""
        for j, k in enumerate(self.n_codes):
            c = self.counts[j]
            if c.shape[1] < n_classes:  # grow geometrically: new classes appear chunk by chunk
                width = max(n_classes, 2 * c.shape[1])
                c = self.counts[j] = np.pad(c, ((0, 0), (0, width - c.shape[1])))
            if not len(ids):
                continue
            x = codes[:, j].astype(np.int64)
            x *= n_classes
            x += ids
            # a code < 0 makes a negative bin (bincount refuses it), a code >= k a bin past k x n_classes
            try:
                flat = np.bincount(x, minlength=k * n_classes)
            except ValueError:
                flat = None
            if flat is None or len(flat) != k * n_classes:
                raise CodeclensError(f"layer {self.layers[j]}: codes outside [0, {k})")
            c[:, :n_classes] += flat.reshape(k, n_classes)

    def tables(self, n_classes: int, new_id: np.ndarray | None = None) -> list[np.ndarray]:
        """Final ``[codes, classes]`` tables, columns in the encoder's sorted class order."""
        out = []
        for c in self.counts:
            c = c[:, :n_classes]
            if new_id is not None:
                t = np.empty_like(c)
                t[:, new_id] = c
                c = t
            out.append(c)
        return out


def count_codes_by_label(
    store: Any, layers: Sequence[int], column: str, chunk: int | None = None, real_message: str = ""
) -> tuple[list[np.ndarray], np.ndarray]:
    """``(tables, classes)``: per 1-based layer a ``[codes, classes]`` count of the frames that have a label."""
    sizes = [store.codebook_sizes[l - 1] for l in layers]
    counter = CodeCounter(layers, sizes)
    enc = LabelEncoder(column, real_message=real_message)
    cols = [l - 1 for l in layers]
    for a, b, v in iter_chunks(store, [column], chunk=chunk):
        ids = enc.ids(v[column])
        codes = code_rows(store, a, b, cols)
        keep = ids >= 0
        if keep.all():  # the common case: no copy of the chunk's codes
            counter.add(codes, ids, enc.n)
        else:
            counter.add(codes[keep], ids[keep], enc.n)
    classes, new = enc.finish()
    return counter.tables(enc.n, new), classes


_MASK64 = (1 << 64) - 1


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 (a bijection that scatters neighbouring integers)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def row_keys(rows: np.ndarray, seed: int = 0) -> np.ndarray:
    """A pseudo-random uint64 key per frame row, a fixed function of ``(seed, row)``.

    Sampling frames by their smallest keys picks a uniform sample that does not depend on how the
    frames were chunked or in which order they came (a generator's stream would)."""
    base = np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) & _MASK64)
    with np.errstate(over="ignore"):
        return _mix64(np.asarray(rows).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ base)


class Reservoir:
    """A uniform random sample of at most ``size`` frames from a stream: the frames with the
    smallest :func:`row_keys`, so the sample is the same whatever the chunking.

    Once full, only frames whose key is at most the largest kept key are copied in (a chunk costs its
    keys and one comparison per frame, not a copy of its arrays), and candidates are merged into the
    sample only when as many as the sample have piled up: amortised O(1) per candidate, whatever the
    chunk size.
    """

    def __init__(self, size: int, seed: int = 0):
        self.size = int(size)
        self.seed = int(seed)
        self.seen = 0
        self.bound = np.uint64(_MASK64)  # largest key a new frame may have and still enter
        self._keys: list[np.ndarray] = []
        self._parts: list[dict[str, np.ndarray]] = []
        self._pending = 0
        self._empty: dict[str, np.ndarray] = {}

    def add(self, rows: np.ndarray, keys: np.ndarray | None = None, mask: np.ndarray | None = None,
            **arrays: np.ndarray) -> None:
        """Offer the frames ``rows`` (with ``arrays`` aligned to them); ``keys`` are their
        :func:`row_keys` when already computed, ``mask`` selects the frames actually offered."""
        rows = np.asarray(rows)
        keys = row_keys(rows, self.seed) if keys is None else keys
        ok = keys <= self.bound
        if mask is not None:
            self.seen += int(np.count_nonzero(mask))
            ok &= mask
        else:
            self.seen += len(rows)
        new = {"row": rows, **arrays}
        if not self._empty:
            self._empty = {k: np.asarray(v)[:0] for k, v in new.items()}
        idx = np.flatnonzero(ok)
        if not len(idx):
            return
        self._keys.append(keys[idx])
        self._parts.append({k: np.asarray(v)[idx] for k, v in new.items()})
        self._pending += len(idx)
        if self._pending >= 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        if len(self._keys) <= 1 and self._pending <= self.size:
            return
        keys = np.concatenate(self._keys)
        items = {k: np.concatenate([p[k] for p in self._parts]) for k in self._parts[0]}
        if len(keys) > self.size:
            top = np.argpartition(keys, self.size - 1)[: self.size]
            keys = keys[top]
            items = {k: v[top] for k, v in items.items()}
        if len(keys) >= self.size:
            self.bound = keys.max()
        self._keys, self._parts, self._pending = [keys], [items], len(keys)

    @property
    def items(self) -> dict[str, np.ndarray]:
        """The sample (``row`` and the offered arrays), in no particular order."""
        if not self._parts:
            return dict(self._empty)
        self._compact()
        return self._parts[0]

    def sorted_by(self, name: str = "row") -> dict[str, np.ndarray]:
        """The sample ordered by one of its arrays (frame rows: sorted reads of the codes)."""
        items = self.items
        if not items:
            return {}
        o = np.argsort(items[name], kind="stable")
        return {k: v[o] for k, v in items.items()}
