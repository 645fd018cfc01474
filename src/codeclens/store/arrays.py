"""Write a feature store straight from arrays.

For tests with planted signals and for importing codes made elsewhere: the
result is a normal store, read by the same :class:`~codeclens.store.Store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..labels.splits import add_splits
from ..util.atomic import atomic_path, write_json
from ..util.provenance import provenance
from . import layout


def write_store(
    path: str | Path,
    codes: np.ndarray,
    tables: list[np.ndarray],
    utterances: pd.DataFrame,
    frames: pd.DataFrame | None = None,
    latent: np.ndarray | None = None,
    frame_rate: float = 50.0,
    sample_rate: int = 16000,
    codec_spec: str = "arrays",
    name: str | None = None,
    seed: int = 0,
    extra_manifest: dict[str, Any] | None = None,
) -> Path:
    """``codes [N, L]``; ``utterances`` needs ``id``, ``speaker`` and ``n_frames`` (summing to N);
    ``frames`` (optional) holds per-frame label columns in frame order."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    codes = np.asarray(codes)
    n, L = codes.shape
    if len(tables) != L:
        raise ValueError(f"{L} code layers but {len(tables)} tables")
    u = utterances.reset_index(drop=True).copy()
    nf = u["n_frames"].to_numpy().astype(np.int64)
    if nf.sum() != n:
        raise ValueError(f"utterances' n_frames sum to {nf.sum()}, codes have {n} frames")
    u["frame_offset"] = np.concatenate([[0], np.cumsum(nf)[:-1]]).astype(np.int64)
    if "duration" not in u.columns:
        u["duration"] = nf / frame_rate
    if "path" not in u.columns:
        u["path"] = ""
    if "split_utt" not in u.columns or "split_spk" not in u.columns:
        u = add_splits(u, seed)
    utt = np.repeat(np.arange(len(u)), nf)
    fr = np.concatenate([np.arange(k) for k in nf]) if len(nf) else np.zeros(0, np.int64)
    f = pd.DataFrame({"utt": utt, "frame": fr, "time": (fr + 0.5) / frame_rate})
    if frames is not None:
        for c in frames.columns:
            if c not in ("utt", "frame", "time"):
                f[c] = frames[c].to_numpy()
    sizes = [int(t.shape[0]) for t in tables]
    dtype = np.int16 if max(sizes) <= 32768 else np.int32
    with atomic_path(path / layout.TABLES, ".safetensors") as tmp:
        save_file({f"layer_{l}": np.ascontiguousarray(t, dtype=np.float32) for l, t in enumerate(tables)}, str(tmp))
    with atomic_path(path / layout.CODES, ".npy") as tmp:
        np.save(tmp, codes.astype(dtype))
    if latent is not None:
        with atomic_path(path / layout.LATENT, ".npy") as tmp:
            np.save(tmp, np.asarray(latent, dtype=np.float16))
    with atomic_path(path / layout.UTTERANCES, ".parquet") as tmp:
        u.to_parquet(tmp, index=False)
    with atomic_path(path / layout.FRAMES, ".parquet") as tmp:
        f.to_parquet(tmp, index=False)
    manifest = {
        "format": layout.FORMAT_VERSION,
        "name": name or path.name,
        "codec": {
            "spec": codec_spec, "adapter": "arrays", "sample_rate": sample_rate, "frame_rate": frame_rate,
            "n_layers": L, "codebook_sizes": sizes, "dim": int(tables[0].shape[1]),
        },
        "corpus": {"spec": "arrays"},
        "labels": [],
        "complete": True,
        "n_utterances": int(len(u)),
        "n_frames": int(n),
        "seconds": float(u["duration"].sum()),
        "skipped": [],
        "codes_dtype": str(np.dtype(dtype)),
        **(extra_manifest or {}),
        **provenance(),
    }
    write_json(path / layout.MANIFEST, manifest)
    return path
