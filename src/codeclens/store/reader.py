"""Reading a feature store: codes, tables, labels, and named representations on read.

Vectors are never stored: ``layer:k`` is ``tables[k][codes[:, k]]`` and
``cumulative:k`` the sum of the first k lookups, materialised per batch so
memory stays bounded by the batch, not the corpus.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd

from ..errors import CodeclensError
from . import layout
from .codesio import codes_at, latent_at, npy_layout, npy_rows
from .pooling import utterance_means
from .reprs import Repr, parse_reprs


class Store:
    """A finished feature store directory (see :mod:`codeclens.store.writer`)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest: dict[str, Any] = check_store(self.path)

    # -- basic facts ---------------------------------------------------------
    @cached_property
    def fingerprint(self) -> str:
        """Content hash of codes, tables, labels and manifest: key caches on this."""
        from .fingerprint import store_fingerprint

        return store_fingerprint(self.path)

    @property
    def name(self) -> str:
        return self.manifest.get("name") or self.path.name

    @property
    def codec(self) -> dict[str, Any]:
        return self.manifest["codec"]

    @property
    def n_layers(self) -> int:
        return int(self.codec["n_layers"])

    @property
    def frame_rate(self) -> float:
        return float(self.codec["frame_rate"])

    @property
    def codebook_sizes(self) -> list[int]:
        return [int(k) for k in self.codec["codebook_sizes"]]

    @property
    def dim(self) -> int:
        return int(self.tables[0].shape[1])

    @cached_property
    def codes(self) -> np.ndarray:
        """``[n_frames, n_layers]`` integer codes (memory-mapped)."""
        return np.load(self.path / layout.CODES, mmap_mode="r")

    @property
    def n_frames(self) -> int:
        return int(self.codes.shape[0])

    @cached_property
    def tables(self) -> list[np.ndarray]:
        from safetensors.numpy import load_file

        t = load_file(str(self.path / layout.TABLES))
        return [t[f"layer_{l}"].astype(np.float32) for l in range(self.n_layers)]

    @property
    def has_latent(self) -> bool:
        return (self.path / layout.LATENT).is_file()

    @cached_property
    def latent(self) -> np.ndarray:
        if not self.has_latent:
            raise CodeclensError(f"{self.path}: store has no latent (extract with --latent)")
        return np.load(self.path / layout.LATENT, mmap_mode="r")

    @cached_property
    def utterances(self) -> pd.DataFrame:
        """One row per utterance: id, speaker, accent..., frame_offset, n_frames, splits."""
        return pd.read_parquet(self.path / layout.UTTERANCES)

    @cached_property
    def frames(self) -> pd.DataFrame:
        """One row per frame: ``utt`` (row in utterances), ``frame``, ``time`` and label columns."""
        return pd.read_parquet(self.path / layout.FRAMES)

    @property
    def n_utterances(self) -> int:
        return len(self.utterances)

    @property
    def has_scales(self) -> bool:
        return (self.path / layout.SCALES).is_file()

    @cached_property
    def _scales(self) -> dict[int, np.ndarray]:
        t = pd.read_parquet(self.path / layout.SCALES).sort_values(["utt", "chunk"])
        return {int(u): g["scale"].to_numpy(np.float32) for u, g in t.groupby("utt")}

    def scales(self, row: int) -> np.ndarray | None:
        """Input scales of utterance ``row`` (one per chunk) for a codec whose decode multiplies
        them back (EnCodec 48 kHz), or None when the store keeps none (other codecs, old stores)."""
        if not self.has_scales:
            return None
        return self._scales.get(int(row))

    def reprs(self, text: str) -> list[Repr]:
        return parse_reprs(text, self.n_layers)

    # -- labels --------------------------------------------------------------
    def label_columns(self) -> list[str]:
        skip = {"utt", "frame", "time", "frame_offset", "n_frames", "path", "id"}
        cols = [c for c in self.frames.columns if c not in skip]
        cols += [c for c in self.utterances.columns if c not in skip and c not in cols]
        return cols

    def frame_column(self, name: str) -> np.ndarray:
        """A label per frame: a frames column, or an utterance column broadcast to frames."""
        if name in self.frames.columns:
            return self.frames[name].to_numpy()
        if name in self.utterances.columns:
            # repeat, not frame_utt: a broadcast need not keep an 8-byte index per frame alive
            return np.repeat(self.utterances[name].to_numpy(), self.utterances["n_frames"].to_numpy())
        raise CodeclensError(
            f"{self.path}: no label column '{name}'; available: {', '.join(self.label_columns())}"
        )

    def utterance_column(self, name: str) -> np.ndarray:
        if name in self.utterances.columns:
            return self.utterances[name].to_numpy()
        raise CodeclensError(
            f"{self.path}: no utterance-level column '{name}'; available: "
            f"{', '.join(c for c in self.utterances.columns)}"
        )

    @cached_property
    def frame_utt(self) -> np.ndarray:
        """Utterance row of every frame (8 bytes a frame for the store's life: streaming passes map
        frames to utterances from :func:`~codeclens.store.codesio.utterance_ends` instead)."""
        u = self.utterances
        return np.repeat(np.arange(len(u)), u["n_frames"].to_numpy())

    # -- representations -----------------------------------------------------
    def _rows(self, rows: slice | np.ndarray | None) -> slice | np.ndarray:
        return slice(0, self.n_frames) if rows is None else rows

    def materialize(self, rep: Repr | str, rows: slice | np.ndarray | None = None) -> np.ndarray:
        """Frame-level values of a (non-pooled) representation for ``rows``.

        ``codes:k`` gives integer codes ``[n]``; the others float32 ``[n, D]``.
        """
        rep = self._one(rep)
        if rep.pooled:
            raise CodeclensError(f"{rep}: use pooled() for utterance-level representations")
        rows = self._rows(rows)
        if rep.kind == "latent":
            return np.asarray(self.latent[rows], dtype=np.float32)
        k = rep.layer - 1  # type: ignore[operator]
        if rep.kind == "codes":
            return np.asarray(self.codes[rows, k], dtype=np.int64)
        codes = np.asarray(self.codes[rows, : k + 1], dtype=np.int64)
        if rep.kind == "layer":
            return self.tables[k][codes[:, k]]
        out = self.tables[0][codes[:, 0]].copy()
        for l in range(1, k + 1):
            out += self.tables[l][codes[:, l]]
        return out

    def iter_batches(
        self, rep: Repr | str, batch_frames: int = 65536, rows: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(row_indices, values)`` in batches, streaming from disk."""
        rep = self._one(rep)
        if rows is None:
            rows = np.arange(npy_layout(self.path / layout.CODES)[2][0])  # the frame count, without the map
        rows = np.asarray(rows)
        ascending = not np.any(np.diff(rows) < 0)
        for a in range(0, len(rows), batch_frames):
            r = rows[a : a + batch_frames]
            yield r, (self._read(rep, r) if ascending else self.materialize(rep, r))

    def _read(self, rep: Repr, rows: np.ndarray) -> np.ndarray:
        """:meth:`materialize` of ascending ``rows``, reading codes and latent rows from the files.

        A pass over the corpus through the memory maps leaves every page it touched resident for the
        store's life (2 bytes x layers of codes per frame, 2 x D of a float16 latent): 256 MB of codes
        at 16 M frames of an 8-layer codec, on top of whatever the analysis holds afterwards."""
        if rep.pooled or rep.kind == "codes":
            return self.materialize(rep, rows)
        if rep.kind == "latent":
            return latent_at(self, rows).astype(np.float32)
        k = rep.layer - 1  # type: ignore[operator]
        layers = [k] if rep.kind == "layer" else list(range(k + 1))
        codes = codes_at(self, rows, layers).astype(np.int64)
        out = self.tables[layers[0]][codes[:, 0]]
        if rep.kind == "cumulative":
            out = out.copy()
            for j, l in enumerate(layers[1:], 1):
                out += self.tables[l][codes[:, j]]
        return out

    def pooled(self, rep: Repr | str, batch_frames: int | None = None) -> np.ndarray:
        """Utterance-mean ``[n_utterances, D]`` (float32) of a representation, streamed in chunks of
        ``batch_frames`` frames (see :mod:`codeclens.store.pooling`: memory is the chunk and the
        per-utterance sums, never a per-frame array; ``layer:k`` / ``cumulative:k`` are summed as
        per-utterance code counts times the tables)."""
        rep = self._one(rep)
        return utterance_means(self, Repr(rep.kind, rep.layer, False), batch_frames)

    def values(self, rep: Repr | str, rows: np.ndarray | None = None) -> np.ndarray:
        """Frame values, or utterance means for a pooled representation (rows = utterances)."""
        rep = self._one(rep)
        if rep.pooled:
            x = self.pooled(rep)
            return x if rows is None else x[rows]
        return self.materialize(rep, rows)

    def _dim_of(self, rep: Repr) -> int:
        return int(self.latent.shape[1]) if rep.kind == "latent" else self.dim

    def _one(self, rep: Repr | str) -> Repr:
        if isinstance(rep, Repr):
            reps = [rep]
        else:
            reps = self.reprs(rep)
        if len(reps) != 1:
            raise CodeclensError(f"expected one representation, got {len(reps)}")
        r = reps[0]
        if r.layer is not None and r.layer > self.n_layers:
            raise CodeclensError(f"{r}: the store's codec has {self.n_layers} layers")
        return r

    # -- summary -------------------------------------------------------------
    def disk_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())

    def summary(self) -> dict[str, Any]:
        u = self.utterances
        dur = float(u["duration"].sum()) if "duration" in u.columns else float("nan")
        return {
            "path": str(self.path),
            "codec": self.codec["spec"],
            "corpus": self.manifest.get("corpus", {}).get("spec"),
            "utterances": int(len(u)),
            "speakers": int(u["speaker"].nunique()) if "speaker" in u.columns else 0,
            "frames": self.n_frames,
            "hours": dur / 3600.0,
            "layers": self.n_layers,
            "codebook_sizes": self.codebook_sizes,
            "frame_rate": self.frame_rate,
            "latent": self.has_latent,
            "skipped": len(self.manifest.get("skipped", [])),
            "labels": self.label_columns(),
            "disk_mb": self.disk_bytes() / 1e6,
        }


_CHECKED: dict[tuple, dict[str, Any]] = {}


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a finished store, or a one-line error naming what is wrong with it."""
    mf = path / layout.MANIFEST
    if not mf.is_file():
        raise CodeclensError(f"{path}: not a feature store (no {layout.MANIFEST})")
    try:
        m = json.loads(mf.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CodeclensError(f"{mf}: unreadable store manifest ({type(e).__name__}: {e})") from None
    if not isinstance(m, dict):
        raise CodeclensError(f"{mf}: unreadable store manifest (a JSON {type(m).__name__}, not an object)")
    if "format" not in m:
        raise CodeclensError(f"{mf}: store manifest has no 'format'")
    if m["format"] != layout.FORMAT_VERSION:
        raise CodeclensError(
            f"{mf}: store format {m['format']!r} is not the one this codeclens reads ({layout.FORMAT_VERSION}); "
            "re-extract the store"
        )
    if not m.get("complete"):
        raise CodeclensError(f"{path}: extraction has not finished; re-run extract to resume")
    codec = m.get("codec")
    try:
        n_layers = int(codec["n_layers"])
        sizes = [int(k) for k in codec["codebook_sizes"]]
        float(codec["frame_rate"])
    except (TypeError, KeyError, ValueError):
        raise CodeclensError(f"{mf}: store manifest lacks a codec with n_layers, codebook_sizes and frame_rate") from None
    if n_layers < 1 or len(sizes) != n_layers or min(sizes) < 1:
        raise CodeclensError(f"{mf}: codec has {n_layers} layers but codebook sizes {sizes}")
    return m


def rebuild_reason(path: str | Path, manifest: dict[str, Any]) -> str | None:
    """Why an intact store should be extracted again by this version (None: it need not).

    EnCodec 48 kHz stores made before chunk scales were kept decode at unit scale; their
    manifests say ``chunk_samples`` (only the normalising 48 kHz model chunks) but have no
    scales table."""
    codec = manifest.get("codec") or {}
    chunked_encodec = str(codec.get("adapter", "")).endswith("EnCodec") and codec.get("chunk_samples")
    if (codec.get("needs_scales") or chunked_encodec) and not (Path(path) / layout.SCALES).is_file():
        return "made before chunk scales were kept (EnCodec 48 kHz: its decodes would be at unit scale)"
    return None


def check_store(path: str | Path) -> dict[str, Any]:
    """Check a store before anything reads it: manifest, array shapes and dtypes, the code
    range and the tables; returns the manifest, or raises a one-line error naming the file.

    The checks are repeated only when a file changed (keyed on sizes and mtimes)."""
    path = Path(path)
    m = read_manifest(path)
    names = (layout.MANIFEST, layout.CODES, layout.TABLES, layout.UTTERANCES, layout.FRAMES, layout.LATENT,
             layout.SCALES)
    key = (str(path.resolve()), *(_stamp(path / n) for n in names))
    if key not in _CHECKED:
        _check_files(path, m)
        _CHECKED[key] = m
    return m


def _stamp(p: Path) -> tuple[int, int] | None:
    try:
        st = p.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _check_files(path: Path, m: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    codec = m["codec"]
    n_layers = int(codec["n_layers"])
    sizes = np.array([int(k) for k in codec["codebook_sizes"]])
    f = path / layout.CODES
    try:
        codes = np.load(f, mmap_mode="r")
    except (OSError, ValueError, EOFError) as e:
        raise CodeclensError(f"{f}: unreadable codes ({_msg(e)})") from None
    if codes.ndim != 2 or codes.shape[1] != n_layers or not np.issubdtype(codes.dtype, np.integer):
        raise CodeclensError(
            f"{f}: expected integer codes [frames, {n_layers}], found {codes.dtype} {list(codes.shape)}"
        )
    n = int(codes.shape[0])
    if "n_frames" in m and int(m["n_frames"]) != n:
        raise CodeclensError(f"{f}: holds {n} frames, the manifest says {m['n_frames']}")
    for block in _code_blocks(f, codes):
        if block.size and (block.min() < 0 or (block.max(axis=0) >= sizes).any()):
            raise CodeclensError(f"{f}: codes outside the codebooks (sizes {sizes.tolist()})")
    rows = {}
    for name in (layout.FRAMES, layout.UTTERANCES):
        pf = path / name
        try:
            rows[name] = pq.ParquetFile(pf).metadata.num_rows
        except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a junk file
            raise CodeclensError(f"{pf}: unreadable table ({_msg(e)})") from None
    if rows[layout.FRAMES] != n:
        raise CodeclensError(f"{path / layout.FRAMES}: {rows[layout.FRAMES]} rows for {n} frames in {f.name}")
    try:
        n_frames = pq.read_table(path / layout.UTTERANCES, columns=["n_frames"]).column(0).to_numpy()
    except Exception as e:  # noqa: BLE001
        raise CodeclensError(f"{path / layout.UTTERANCES}: no readable n_frames column ({_msg(e)})") from None
    if int(n_frames.sum()) != n:
        raise CodeclensError(f"{path / layout.UTTERANCES}: n_frames sum to {int(n_frames.sum())}, {f.name} holds {n}")
    _check_tables(path / layout.TABLES, sizes)
    lat = path / layout.LATENT
    if lat.exists():
        try:
            z = np.load(lat, mmap_mode="r")
        except (OSError, ValueError, EOFError) as e:
            raise CodeclensError(f"{lat}: unreadable latent ({_msg(e)})") from None
        if z.ndim != 2 or z.shape[0] != n:
            raise CodeclensError(f"{lat}: expected latent [{n}, D], found {list(z.shape)}")
    _check_scales(path / layout.SCALES, rows[layout.UTTERANCES])


def _code_blocks(f: Path, codes: np.ndarray, block: int = 1 << 20):
    """``codes`` in blocks of frames (a large store is never read whole), read from the file rather
    than through the memory map: mapped pages stay resident, and count in the process's peak RSS
    (2 bytes x layers per frame), for as long as the map lives."""
    n = codes.shape[0]
    mapped = isinstance(codes, np.memmap) and codes.flags.c_contiguous
    for a in range(0, n, block):
        yield npy_rows(f, a, min(a + block, n)) if mapped else np.asarray(codes[a : a + block])


def _check_scales(f: Path, n_utts: int) -> None:
    if not f.exists():
        return
    try:
        t = pd.read_parquet(f, columns=["utt", "chunk", "scale"])
    except Exception as e:  # noqa: BLE001 - pyarrow raises several types for a junk file
        raise CodeclensError(f"{f}: unreadable scales table ({_msg(e)})") from None
    u, s = t["utt"].to_numpy(), t["scale"].to_numpy()
    if len(t) and (u.min() < 0 or u.max() >= n_utts or not np.isfinite(s).all() or (s <= 0).any()):
        raise CodeclensError(f"{f}: expected positive finite scales of utterances 0..{n_utts - 1}")


def _check_tables(f: Path, sizes: np.ndarray) -> None:
    from safetensors import safe_open

    try:
        with safe_open(str(f), framework="numpy") as t:
            shapes = {k: t.get_slice(k).get_shape() for k in t.keys()}
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, a header that is not JSON
        raise CodeclensError(f"{f}: unreadable tables ({_msg(e)})") from None
    dims = set()
    for l, k in enumerate(sizes):
        shape = shapes.get(f"layer_{l}")
        if shape is None or len(shape) != 2 or shape[0] != k:
            raise CodeclensError(f"{f}: layer_{l} should be a [{k}, D] table, found {shape}")
        dims.add(shape[1])
    if len(dims) != 1:
        raise CodeclensError(f"{f}: layer tables differ in width ({sorted(dims)})")


def _msg(e: Exception) -> str:
    text = str(e).splitlines()[0] if str(e) else ""
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def open_stores(stores: Sequence["Store | str | Path"], who: str = "") -> list[Store]:
    """Stores from paths (open ones pass through); a one-line error when there are none (``who``: the
    analysis named in it)."""
    out = [s if isinstance(s, Store) else Store(s) for s in stores]
    if not out:
        raise CodeclensError(f"{who + ': ' if who else ''}give at least one store (--store PATH)")
    return out
