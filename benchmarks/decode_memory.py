"""Benchmark: resident memory of a codec decoding and re-encoding utterance after utterance,
as an ``ablate`` or ``causal`` step does, with glibc's dynamic mmap threshold vs a fixed one.

A full-size random-weight checkpoint of each codec is saved once (``random_init=1&seed=1``, as a
study's ``save_random`` step makes it) and reloaded through the ordinary loader in a fresh process
per mode. Each process decodes random codes of ``--seconds`` and re-encodes the decode,
``--repeats`` times, and prints its resident set after the load and after every round, and the
largest transient of one decode or encode above the resident set before it (the high-water mark
reset before each, ``/proc/self/clear_refs``). ``dynamic`` is glibc's default; ``fixed`` is what
every codeclens command sets first (``util/heap.py``). Linux only.

    python benchmarks/decode_memory.py                                   # SpeechTokenizer and EnCodec 24 kHz, 8 s
    python benchmarks/decode_memory.py --codec speechtokenizer --seconds 16 --repeats 6
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

CHILD = r"""
import gc, json, sys
import numpy as np, torch
from codeclens.util.heap import mmap_large_buffers
spec, mode, seconds, repeats = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
if mode == "fixed":
    assert mmap_large_buffers()
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) / 2**20  # GB
from codeclens.codecs import load_codec
from codeclens.analyses.ablate.engine import decode_codes, encode_audio
codec = load_codec(spec, "cpu")
gc.collect()
out = {"loaded": status("VmRSS"), "rounds": [], "transient": 0.0, "peak": status("VmHWM")}
codes = np.random.default_rng(0).integers(0, min(codec.codebook_sizes), (codec.n_layers, int(seconds * codec.frame_rate)))
def peak_of(fn):
    gc.collect()
    before = status("VmRSS")
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark
    r = fn()
    out["transient"] = max(out["transient"], status("VmHWM") - before)
    out["peak"] = max(out["peak"], status("VmHWM"))  # of the process: the load's, then each operation's
    return r
for _ in range(repeats):
    audio = peak_of(lambda: decode_codes(codec, codes))
    peak_of(lambda: encode_audio(codec, audio))
    gc.collect()
    out["rounds"].append(status("VmRSS"))
print("RESULT", json.dumps(out))
"""

DEFAULT_CODECS = ("speechtokenizer", "encodec:24khz@6kbps")


def checkpoint(spec: str, root: Path) -> str:
    """The spec that reloads a saved full-size random-weight ``spec`` (saved in its own process)."""
    d = root / spec.replace(":", "_").replace("@", "_")
    code = ("import sys; from codeclens.codecs.testing import save_random_checkpoint; "
            "print('SPEC', save_random_checkpoint(sys.argv[1], sys.argv[2], seed=1))")
    out = subprocess.run([sys.executable, "-c", code, spec, str(d)], capture_output=True, text=True, check=True,
                         env=_env())
    return [line for line in out.stdout.splitlines() if line.startswith("SPEC ")][-1][5:]


def _env() -> dict:
    import os

    return dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))


def run(spec: str, mode: str, seconds: float, repeats: int) -> dict:
    p = subprocess.run([sys.executable, "-c", CHILD, spec, mode, str(seconds), str(repeats)],
                       capture_output=True, text=True, env=_env())
    if p.returncode:
        raise SystemExit(f"{spec} ({mode}) failed: {p.stderr.strip().splitlines()[-1:]}")
    return json.loads([line for line in p.stdout.splitlines() if line.startswith("RESULT ")][-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--codec", action="append", help="codec spec (repeat); default: SpeechTokenizer and EnCodec 24 kHz")
    ap.add_argument("--seconds", type=float, default=8.0, help="length of each decode (ablate's --max-seconds: 8)")
    ap.add_argument("--repeats", type=int, default=4, help="decode + encode rounds per process")
    args = ap.parse_args()
    if not sys.platform.startswith("linux"):
        raise SystemExit("decode_memory.py reads /proc: Linux only")
    with tempfile.TemporaryDirectory(prefix="codeclens-decmem-") as tmp:
        print(f"{'codec':<24} {'mode':<8} {'loaded':>7} {'after each round (GB)':<32} {'transient':>9} {'peak':>6}")
        for spec in args.codec or DEFAULT_CODECS:
            ck = checkpoint(spec, Path(tmp))
            res = {m: run(ck, m, args.seconds, args.repeats) for m in ("dynamic", "fixed")}
            for m, r in res.items():
                rounds = " ".join(f"{v:.2f}" for v in r["rounds"])
                print(f"{spec:<24} {m:<8} {r['loaded']:7.2f} {rounds:<32} {r['transient']:9.2f} {r['peak']:6.2f}")
            d, f = res["dynamic"], res["fixed"]
            print(f"{'':<24} fixed vs dynamic: peak {f['peak'] / d['peak']:.2f}x, last round "
                  f"{f['rounds'][-1] / d['rounds'][-1]:.2f}x; growth from the load to the last round "
                  f"{d['rounds'][-1] - d['loaded']:+.2f} -> {f['rounds'][-1] - f['loaded']:+.2f} GB")


if __name__ == "__main__":
    main()
