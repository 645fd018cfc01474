"""Benchmark: time and peak RSS of the default analyses against corpus size.

Planted stores (``analyses/probes/synthetic.py``: 8 layers x 1024 codes, D = 128,
200 speakers, 40 phones, ~900-frame utterances) of 2 M, 4 M, 8 M and 16 M
frames. Each analysis runs through the real CLI in its own process, so the peak
RSS (``ru_maxrss`` of that child, as ``/usr/bin/time -v`` reports it) is the
analysis' alone. Reported per analysis: wall seconds, peak RSS, and the growth
per extra frame between the smallest and largest store (bytes and microseconds
per frame). Also: the *data floor* of ``layer:k`` probes (reading the labels
and codes and one bincount per layer and task, nothing else) and a
scikit-learn baseline where it still fits in memory.

    python benchmarks/scale.py --frames 2,4 --analyses probe-layer,probe-cumulative
    python benchmarks/scale.py --frames 2,4,8,16            # everything (long)
    python benchmarks/scale.py --frames 0.05 --analyses probe-layer --keep /tmp/stores   # smoke
    python benchmarks/scale.py --encode-peak 10,40          # extraction batch memory of full-size EnCodec

Stores are cached under ``--keep`` (default: a temp dir removed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

ANALYSES = {
    # name -> CLI arguments after the store (the defaults of each command, unless stated)
    "probe-layer": ["probe", "--task", "phone,speaker,f0", "--repr", "layer:*", "--quiet"],
    # --workers 2: a task's probes beside its controls, classification tasks beside f0 / f0_st (same numbers)
    "probe-layer-w2": ["probe", "--task", "phone,speaker,f0", "--repr", "layer:*", "--workers", "2", "--quiet"],
    "probe-layer-bare": ["probe", "--task", "phone,speaker,f0", "--repr", "layer:*", "--control", "none",
                         "--no-lookup", "--bootstrap", "0", "--l2", "1e-4", "--quiet"],
    "probe-cumulative": ["probe", "--task", "phone,speaker,f0", "--repr", "cumulative:8", "--quiet"],
    "tokens": ["tokens", "--quiet"],
    "mi": ["mi", "--quiet"],
    # The planted accents (a0, a1) are one class (non-US-UK) under the paper's grouping, which the
    # default refuses: --grouping none keeps them as stored, everything else is the default.
    "sae": ["sae", "--grouping", "none", "--quiet"],
}


def make_store(path: Path, n_frames: int) -> Path:
    """A planted store of about ``n_frames`` frames (phone in layer 1, speaker in 2, F0 in 3)."""
    from codeclens.analyses.probes.synthetic import planted_store

    if (path / "manifest.json").is_file():
        return path
    n_utt = max(n_frames // 900, 20)
    return planted_store(path, n_utt=n_utt, n_speakers=min(200, n_utt // 4), frames=(600, 1200), n_layers=8,
                         codebook_size=1024, dim=128, n_phones=40, noise=0.4, spread=1.5,
                         carriers={"phone": 1, "speaker": 2, "f0": 3}, seed=0, name=path.name)


def run_child(argv: list[str]) -> tuple[float, float, int, float]:
    """(wall seconds, peak RSS MB, exit code, CPU seconds) of one CLI run in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    t = time.perf_counter()
    p = subprocess.Popen([sys.executable, "-m", "codeclens", *argv], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t
    err = p.stderr.read().decode() if p.stderr else ""
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode:
        print(f"  ! {' '.join(argv[:1])} exited {p.returncode}: {err.strip().splitlines()[-1:]}", file=sys.stderr)
    return wall, ru.ru_maxrss / 1024.0, p.returncode, ru.ru_utime + ru.ru_stime


def analysis_cpu(out: Path) -> float:
    """CPU seconds inside the analysis (``result.json``): the process's figure less interpreter
    start-up and imports (~2-3 s of torch, pandas and matplotlib here); NaN when not recorded."""
    try:
        return float(json.loads((out / "result.json").read_text()).get("cpu_seconds", float("nan")))
    except (OSError, ValueError):
        return float("nan")


def analysis_argv(name: str, store: Path, out: Path) -> list[str]:
    cmd = ANALYSES[name]
    if cmd[0] == "sae":  # the SAE command takes stores as positional arguments
        return [cmd[0], str(store), "--out", str(out / name), *cmd[1:]]
    return [cmd[0], "--store", str(store), "--out", str(out / name), *cmd[1:]]


FLOOR = r"""
import sys, time, resource
import numpy as np, pyarrow.parquet as pq
from codeclens.store import Store
t, c0 = time.perf_counter(), time.process_time()
s = Store(sys.argv[1])
fr = pq.read_table(s.path / "frames.parquet", columns=["phone", "f0_hz"])
ph = fr.column("phone").dictionary_encode().combine_chunks().indices.to_numpy()
f0 = fr.column("f0_hz").to_numpy()
spk = np.repeat(s.utterances["speaker"].astype("category").cat.codes.to_numpy(), s.utterances["n_frames"].to_numpy())
for k in range(s.n_layers):
    c = np.asarray(s.codes[:, k], np.int64)
    K = s.codebook_sizes[k]
    np.bincount(c * 64 + ph, minlength=K * 64)
    np.bincount(c * 256 + spk, minlength=K * 256)
    ok = np.isfinite(f0)
    np.bincount(c[ok], weights=f0[ok], minlength=K)
print(time.perf_counter() - t, time.process_time() - c0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""

SKLEARN = r"""
import sys, time, resource
import numpy as np, pyarrow.parquet as pq
from sklearn.linear_model import LogisticRegression
from codeclens.store import Store
s = Store(sys.argv[1])
t, c = time.perf_counter(), time.process_time()
ph = pq.read_table(s.path / "frames.parquet", columns=["phone"]).column("phone").to_numpy().astype(str)
split = s.utterances["split_spk"].to_numpy()[s.frame_utt]
tr = np.flatnonzero(split == "train")
x = s.materialize("layer:1", tr)
LogisticRegression(max_iter=5).fit(x, ph[tr])  # 5 lbfgs iterations: memory is the point here
print(time.perf_counter() - t, time.process_time() - c, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


ENCODE = r"""
import sys, time, resource, torch
torch.set_num_threads(1)
from codeclens.codecs import load_codec
secs = float(sys.argv[1])
c = load_codec(sys.argv[2], device="cpu")
model = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
L = int(secs * c.sample_rate)
w, n = torch.randn(1, L) * 0.1, torch.full((1,), L)
t = time.process_time()
with torch.no_grad():
    c.encode(w, n)
    c.latent(w, n)
print(time.process_time() - t, model, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""
"""Peak RSS of one extraction batch (codes + latent) of a full-size codec against the batch's seconds of
audio: what ``[extract] batch_seconds`` costs (random weights: the same architecture and activations)."""


def encode_peak(seconds: list[float], spec: str) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    for secs in seconds:
        out = subprocess.run([sys.executable, "-c", ENCODE, str(secs), spec], env=env, capture_output=True,
                             text=True, check=True)
        cpu, model, rss = (float(v) for v in out.stdout.split())
        print(f"  {spec}: {secs:g} s of audio in one batch: model {model:.0f} MB, peak {rss:.0f} MB "
              f"(+{(rss - model) / secs:.1f} MB per second of audio), CPU {cpu:.1f} s", flush=True)


def run_script(code: str, store: Path) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds, peak RSS MB) of a script in a fresh process."""
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", code, str(store)], env=env, capture_output=True, text=True, check=True)
    secs, cpu, rss = out.stdout.split()
    return float(secs), float(cpu), float(rss)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", default="2,4,8,16", help="store sizes in millions of frames")
    ap.add_argument("--analyses", default=",".join(ANALYSES), help="comma list of " + ", ".join(ANALYSES))
    ap.add_argument("--keep", default=None, help="cache the stores here (default: temp dir, removed)")
    ap.add_argument("--sklearn-max", type=float, default=4.0, help="largest store (M frames) for the sklearn baseline")
    ap.add_argument("--json", default=None, help="also write the results here")
    ap.add_argument("--encode-peak", default=None, help="seconds of audio (comma list): peak RSS of one extraction "
                    "batch of --codec instead of the store benchmarks")
    ap.add_argument("--codec", default="encodec:24khz@6kbps?random_init=1&seed=0", help="codec of --encode-peak")
    args = ap.parse_args()
    if args.encode_peak:
        encode_peak([float(x) for x in args.encode_peak.split(",")], args.codec)
        return
    sizes = [float(x) for x in args.frames.split(",")]
    names = [a for a in args.analyses.split(",") if a]
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cc_scale_"))
    root.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(SRC))
    results = []
    try:
        for m in sizes:
            store = root / f"planted_{m:g}M"
            t = time.perf_counter()
            # In a child process: a child's peak RSS counts its parent's at fork time (Linux keeps the
            # larger of the two across exec), so the parent must never hold a store in memory.
            subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(SRC)!r}, "
                            f"{str(Path(__file__).parent)!r}]; from scale import make_store; from pathlib import Path; "
                            f"make_store(Path({str(store)!r}), {int(m * 1e6)})"], check=True)
            print(f"store {store.name}: {time.perf_counter() - t:.0f} s to build", flush=True)
            n = int(json.loads((store / "manifest.json").read_text())["n_frames"])
            secs, cpu, rss = run_script(FLOOR, store)
            floor_cpu = cpu
            results.append({"frames": n, "analysis": "floor(layer:k)", "secs": secs, "cpu_secs": cpu, "rss_mb": rss})
            print(f"  {n:>10,} frames  {'floor(layer:k)':<18} {secs:7.1f} s  (CPU {cpu:7.1f} s)  {rss:7.0f} MB", flush=True)
            if m <= args.sklearn_max:
                secs, cpu, rss = run_script(SKLEARN, store)
                results.append({"frames": n, "analysis": "sklearn(1 probe, 5 it)", "secs": secs, "cpu_secs": cpu,
                                "rss_mb": rss})
                print(f"  {n:>10,} frames  {'sklearn(1 probe)':<18} {secs:7.1f} s  (CPU {cpu:7.1f} s)  {rss:7.0f} MB",
                      flush=True)
            out = root / f"out_{m:g}M"
            for a in names:
                shutil.rmtree(out / a, ignore_errors=True)
                wall, rss, rc, cpu = run_child(analysis_argv(a, store, out))
                inner = analysis_cpu(out / a)
                results.append({"frames": n, "analysis": a, "secs": wall, "cpu_secs": cpu, "rss_mb": rss, "rc": rc,
                                "analysis_cpu_secs": inner})
                # layer:k runs beside their floor (the same store's labels, codes and one bincount per layer):
                # what the analysis costs over reading its data once.
                vs = f"  = {inner / floor_cpu:.1f}x the floor's CPU" if a.startswith("probe-layer") and floor_cpu > 0 else ""
                print(f"  {n:>10,} frames  {a:<18} {wall:7.1f} s  (CPU {cpu:7.1f} s, in the analysis {inner:7.1f} s)"
                      f"  {rss:7.0f} MB" + ("" if rc == 0 else f"  (exit {rc})") + vs, flush=True)
        print("\nper-frame growth between the smallest and largest store:")
        for a in sorted({r["analysis"] for r in results}):
            rs = sorted((r for r in results if r["analysis"] == a), key=lambda r: r["frames"])
            if len(rs) >= 2 and rs[-1]["frames"] > rs[0]["frames"]:
                d = rs[-1]["frames"] - rs[0]["frames"]
                print(f"  {a:<22} {(rs[-1]['rss_mb'] - rs[0]['rss_mb']) * 2**20 / d:7.1f} B/frame  "
                      f"{(rs[-1]['secs'] - rs[0]['secs']) * 1e6 / d:7.2f} us/frame wall  "
                      f"{(rs[-1]['cpu_secs'] - rs[0]['cpu_secs']) * 1e6 / d:7.2f} us/frame CPU")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
