"""Benchmark: extraction with the local engine vs the Ray engine (local Ray, 2 workers).

Same corpus (speech-like calibration audio written as a folder of wavs), same
codec (a melrvq fitted on it, or a full-size random-weight EnCodec with
``--codec encodec``), labels ``loudness``. Reported: wall seconds and
utterances per second, Ray's start-up and actor start included (that is the
overhead a user pays), and whether the two stores' codes are identical.

    python benchmarks/ray_engine.py                  # 48 utterances of 4 s, melrvq
    python benchmarks/ray_engine.py --n 16 --codec encodec
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="utterances")
    ap.add_argument("--seconds", type=float, default=4.0, help="seconds per utterance")
    ap.add_argument("--codec", default="melrvq", choices=["melrvq", "encodec"])
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf

    from codeclens.cli import main as cli
    from codeclens.codecs.calibration import calibration_audio
    from codeclens.store import Store

    root = Path(tempfile.mkdtemp(prefix="cc_raybench_"))
    try:
        sr = 16000 if args.codec == "melrvq" else 24000
        for i in range(args.n):
            d = root / "audio" / f"spk{i % 4}"
            d.mkdir(parents=True, exist_ok=True)
            sf.write(d / f"u{i:03d}.wav", calibration_audio(sr, args.seconds, seed=i), sr)
        if args.codec == "melrvq":
            from codeclens.codecs.melrvq import MelRVQConfig, fit_melrvq
            from codeclens.corpora import load_corpus

            fit_melrvq(load_corpus(str(root / "audio")), root / "melrvq", MelRVQConfig(n_layers=8, codebook_size=64),
                       iters=10, progress=False)
            codec = f"melrvq?checkpoint={root / 'melrvq'}"
        else:
            codec = "encodec:24khz@6kbps?random_init=1"
        common = ["--corpus", str(root / "audio"), "--codec", codec, "--labels", "loudness", "--shard-size", "4",
                  "--quiet", "--name", "s", "--device", "cpu"]
        times = {}
        for engine in ("local", "ray"):
            extra = ["--engine", "ray", "--workers", str(args.workers)] if engine == "ray" else []
            t = time.perf_counter()
            cli(["extract", "--out", str(root / engine), *common, *extra])
            times[engine] = time.perf_counter() - t
        same = np.array_equal(Store(root / "local").codes, Store(root / "ray").codes)
        audio_h = args.n * args.seconds / 3600
        print(f"\n{args.n} utterances x {args.seconds:g} s ({audio_h * 60:.1f} min), codec {args.codec}, "
              f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        for engine, t in times.items():
            label = engine if engine == "local" else f"ray ({args.workers} workers)"
            print(f"  {label:<18} {t:7.1f} s  {args.n / t:6.2f} utt/s  {audio_h * 3600 / t:7.1f}x real time")
        print(f"  codes identical: {same}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
