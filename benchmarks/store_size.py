"""Store size vs caching float16 vectors, and extraction speed (x real time).

The usual approach caches, per utterance, the float vector of every layer
(``[T, L, D]`` float16). The store keeps int16 codes ``[T, L]`` plus one small
table per layer. Both are measured on disk for the same corpus and codec.

    python benchmarks/store_size.py [--corpus SPEC] [--codecs SPEC,SPEC] [--minutes M]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def make_corpus(root: Path, minutes: float) -> str:
    import soundfile as sf

    from codeclens.codecs.calibration import calibration_audio

    n = max(1, int(minutes * 60 / 4))
    for i in range(n):
        d = root / f"spk{i % 10}"
        d.mkdir(parents=True, exist_ok=True)
        sf.write(d / f"u{i:04d}.wav", calibration_audio(24000, 4.0, seed=i), 24000)
    return str(root)


def vector_cache_bytes(store, out: Path) -> int:
    """Write what the usual approach writes: one float16 [T, L, D] .npy per utterance."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for _, row in store.utterances.iterrows():
        a, b = int(row["frame_offset"]), int(row["frame_offset"] + row["n_frames"])
        v = np.stack([store.materialize(f"layer:{l + 1}", slice(a, b)) for l in range(store.n_layers)], 1)
        p = out / f"{row['id'].replace('/', '_')}.npy"
        np.save(p, v.astype(np.float16))
        total += p.stat().st_size
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", default=None, help="corpus spec (default: generated speech-like audio)")
    ap.add_argument("--minutes", type=float, default=5.0, help="minutes of generated audio")
    ap.add_argument(
        "--codecs", default="melrvq,encodec:24khz@6kbps?random_init=1",
        help="codec specs (melrvq is fitted on the corpus first)",
    )
    args = ap.parse_args()

    from codeclens.codecs.melrvq import fit_melrvq
    from codeclens.corpora import load_corpus
    from codeclens.store import Store
    from codeclens.store.writer import ExtractConfig, extract

    tmp = Path(tempfile.mkdtemp(prefix="codeclens-bench-"))
    try:
        corpus = args.corpus or make_corpus(tmp / "audio", args.minutes)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}")
        rows = []
        for spec in args.codecs.split(","):
            if spec == "melrvq":
                fit_melrvq(load_corpus(corpus), tmp / "melrvq", progress=False)
                spec = f"melrvq?checkpoint={tmp / 'melrvq'}"
            out = tmp / f"store-{len(rows)}"
            t0 = time.perf_counter()
            extract(ExtractConfig(corpus=corpus, codec=spec, out=str(out), labels=("none",)), progress=False, log=lambda *_: None)
            dt = time.perf_counter() - t0
            s = Store(out)
            audio_s = float(s.utterances["duration"].sum())
            store_b = s.disk_bytes()
            vec_b = vector_cache_bytes(s, tmp / f"vectors-{len(rows)}")
            table_b = (s.path / "tables.safetensors").stat().st_size
            rows.append((spec.split("?")[0], s.n_layers, s.dim, audio_s, dt, store_b, vec_b, table_b, s.n_frames))
            shutil.rmtree(tmp / f"vectors-{len(rows) - 1}")
        print(f"\n{'codec':24s} {'L':>3s} {'D':>4s} {'audio s':>8s} {'x RT':>7s} {'store MB':>9s} {'tables MB':>9s} {'vectors MB':>11s} {'ratio':>7s} {'B/frame store':>13s} {'B/frame vec':>11s} {'ratio @100h':>11s}")
        for name, L, D, audio_s, dt, sb, vb, tb, nfr in rows:
            # Tables are a fixed cost per store; per-frame bytes decide the ratio on real corpora.
            per_store, per_vec = (sb - tb) / nfr, vb / nfr
            frames_100h = 100 * 3600 * nfr / audio_s
            at_100h = per_vec * frames_100h / (tb + per_store * frames_100h)
            print(f"{name:24s} {L:3d} {D:4d} {audio_s:8.1f} {audio_s / dt:7.1f} {sb / 1e6:9.2f} {tb / 1e6:9.2f} {vb / 1e6:11.2f} {vb / sb:6.1f}x {per_store:13.1f} {per_vec:11.1f} {at_100h:10.1f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
