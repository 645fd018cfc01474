"""Benchmark: extraction with the local engine vs the Ray engine (local Ray, 2 workers).

Same corpus (speech-like calibration audio written as a folder of wavs, 4
speakers), same codec (a melrvq fitted on it, or a full-size random-weight
EnCodec with ``--codec encodec``), same labels. Each extraction runs as
``codeclens extract`` in a fresh process under ``/usr/bin/time -v``, so wall,
CPU (user + system of the process and the children it reaped: Ray's raylet and
workers) and peak RSS are the command's own. Ray's wall includes its start-up,
the actors' start (model load, labeller fit) and the driver's final
concatenation: the overhead a user pays. That overhead is also measured on its
own, twice:

- ``ray start``: ``ray.init`` + ``ray.shutdown`` with the engine's settings, nothing run;
- ``ray, 1 shard``: the same Ray extraction limited to one shard (``--limit SHARD``): start-up,
  both actor pools and the final build, with almost no work;

and each engine's throughput without its start-up, ``(N - SHARD) / (wall(N) - wall(1 shard))``
(the local engine's 1-shard run measures its own: imports, model load, labeller fit).

    python benchmarks/ray_engine.py                                  # 160 utterances of 2 s, EnCodec, loudness
    python benchmarks/ray_engine.py --codec melrvq --n 48 --seconds 4
    python benchmarks/ray_engine.py --labels loudness,f0 --label-workers 1
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))

RAY_START = """
import ray, time
t = time.perf_counter()
ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False)
ray.shutdown()
print(time.perf_counter() - t)
"""


def timed(cmd: list[str]) -> dict[str, float]:
    """Run ``cmd`` under /usr/bin/time -v: wall, CPU (user + system) and peak RSS of the process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p)}
    t = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *cmd], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    cpu = sum(float(x) for x in re.findall(r"(?:User|System) time \(seconds\): ([\d.]+)", proc.stderr))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1)) * 1024
    return {"wall": wall, "cpu": cpu, "rss": rss, "stdout": proc.stdout}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=160, help="utterances")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds per utterance")
    ap.add_argument("--codec", default="encodec", choices=["melrvq", "encodec"])
    ap.add_argument("--labels", default="loudness", help="labellers (comma-separated), as --labels of extract")
    ap.add_argument("--workers", type=int, default=2, help="Ray codec actors")
    ap.add_argument("--label-workers", type=int, default=None, help="Ray labelling actors (default: the engine's)")
    ap.add_argument("--shard-size", type=int, default=8)
    ap.add_argument("--keep", default=None, help="folder to keep the corpus and stores in (default: a temp dir)")
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf

    from codeclens.codecs.calibration import calibration_audio
    from codeclens.store import Store

    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cc_raybench_"))
    root.mkdir(parents=True, exist_ok=True)
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
            # saved once and reloaded: every process (driver, actors) loads the very same weights
            from codeclens.codecs.testing import save_random_checkpoint

            codec = save_random_checkpoint("encodec:24khz@6kbps?random_init=1", root / "encodec")
        ray_opts = ["--engine", "ray", "--workers", str(args.workers)]
        if args.label_workers:
            ray_opts += ["--label-workers", str(args.label_workers)]
        cli = [sys.executable, "-m", "codeclens", "extract", "--corpus", str(root / "audio"), "--codec", codec,
               "--labels", args.labels, "--shard-size", str(args.shard_size), "--quiet", "--name", "s",
               "--device", "cpu"]
        runs = {
            "local": cli + ["--out", str(root / "local")],
            "local, 1 shard": cli + ["--out", str(root / "local1"), "--limit", str(args.shard_size)],
            f"ray ({args.workers} workers)": cli + ["--out", str(root / "ray"), *ray_opts],
            "ray, 1 shard": cli + ["--out", str(root / "ray1"), "--limit", str(args.shard_size), *ray_opts],
        }
        res = {name: timed(cmd) for name, cmd in runs.items()}
        cpus = max(2, args.workers + (args.label_workers or args.workers))
        start = timed([sys.executable, "-c", RAY_START.format(cpus=cpus)])
        same = np.array_equal(Store(root / "local").codes, Store(root / "ray").codes)
        audio = args.n * args.seconds
        print(f"\n{args.n} utterances x {args.seconds:g} s ({audio / 60:.1f} min), codec {args.codec}, labels "
              f"{args.labels}, shards of {args.shard_size}, label workers {args.label_workers or 'default'}, "
              f"nproc {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
        print(f"  {'run':<18} {'wall s':>8} {'CPU s':>8} {'peak GB':>8} {'utt/s':>7} {'x real time':>11}")
        for name, r in res.items():
            n = args.shard_size if name.endswith("1 shard") else args.n
            print(f"  {name:<18} {r['wall']:8.1f} {r['cpu']:8.1f} {r['rss'] / 1e9:8.2f} {n / r['wall']:7.2f} "
                  f"{n * args.seconds / r['wall']:11.1f}")
        print(f"  {'ray start':<18} {start['wall']:8.1f} {start['cpu']:8.1f} {start['rss'] / 1e9:8.2f}"
              f"   (ray.init + shutdown alone: {float(start['stdout'].strip()):.1f} s inside the process)")
        for eng, full in (("local", res["local"]), ("ray", res[f"ray ({args.workers} workers)"])):
            one = res[f"{eng}, 1 shard"]
            if full["wall"] > one["wall"]:
                rate = (args.n - args.shard_size) / (full["wall"] - one["wall"])
                print(f"  {eng} without start-up: {rate:.2f} utt/s wall, "
                      f"{(args.n - args.shard_size) / max(full['cpu'] - one['cpu'], 1e-9):.2f} utt per CPU s; "
                      f"start-up (1-shard run) {one['wall']:.1f} s wall, {one['cpu']:.1f} s CPU")
        print(f"  codes identical: {same}")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
