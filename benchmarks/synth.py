"""Synthetic corpus speed, in x real time (seconds of audio made per second).

Compares, in one run:
- raw eSpeak NG synthesis in this process (fast, but not reproducible: eSpeak
  keeps state between calls);
- the corpus writer (`synthetic` corpus: a fresh fork of an untouched eSpeak
  process per utterance, wav + TextGrid + manifest written to disk), with 1 and
  2 workers;
- the obvious way to get the same reproducibility without forking: a new
  Python process per utterance.

Wall-clock figures depend on what else runs on the machine (the load average is
printed); CPU-time figures (this process + its children) do not.

    .venv/bin/python benchmarks/synth.py [--n 100]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from codeclens.util.provenance import cpu_model


def cpu_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100, help="utterances per corpus run")
    ap.add_argument("--fresh", type=int, default=8, help="utterances for the process-per-utterance baseline")
    args = ap.parse_args()

    from codeclens.corpora import load_corpus
    from codeclens.corpora.espeak import engine
    from codeclens.corpora.synthetic import SyntheticConfig, bundled_sentences, plan, read_sentences, resolve

    print(f"machine: {os.cpu_count()} cores ({cpu_model()}), python {platform.python_version()}, "
          f"eSpeak NG {engine().version}, load average {os.getloadavg()[0]:.1f}")
    sentences = read_sentences(bundled_sentences())
    utts = plan(resolve(SyntheticConfig(n=args.n, seed=0)), sentences)

    # 1. Raw synthesis in this process.
    eng = engine()
    t0, c0 = time.perf_counter(), time.process_time()
    audio_s = 0.0
    for u in utts:
        audio_s += eng.synthesize(u.text, u.speaker.voice, u.speaker.pitch, u.speaker.rate).duration
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    raw = audio_s / wall
    print(f"in-process synthesis     {args.n:4d} utt  {audio_s:7.1f} s audio  {raw:7.1f}x real time (wall)  "
          f"{audio_s / cpu:7.1f}x (CPU)   [not reproducible]")

    # 2. The corpus writer.
    results = {}
    for jobs in (1, 2):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "corpus"
            t0, c0, k0 = time.perf_counter(), time.process_time(), cpu_children()
            corpus = load_corpus(f"synthetic:{out}?n={args.n}&seed=0&jobs={jobs}&progress=0")
            wall = time.perf_counter() - t0
            cpu = time.process_time() - c0 + cpu_children() - k0
            n_bytes = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
            dur = sum(iv.phones[-1].end for iv in corpus)
        results[jobs] = dur / wall
        print(f"corpus writer, {jobs} worker{'s' if jobs > 1 else ' '}  {args.n:4d} utt  {dur:7.1f} s audio  "
              f"{dur / wall:7.1f}x real time (wall)  {dur / cpu:7.1f}x (CPU)   {n_bytes / 1e6:.1f} MB on disk")

    # 3. Baseline: a new Python process per utterance.
    code = ("import sys; from codeclens.corpora.espeak import engine; "
            "s = engine().synthesize(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])); print(s.duration)")
    t0, k0 = time.perf_counter(), cpu_children()
    dur = 0.0
    for u in utts[: args.fresh]:
        r = subprocess.run([sys.executable, "-c", code, u.text, u.speaker.voice, str(u.speaker.pitch),
                            str(u.speaker.rate)], capture_output=True, text=True, check=True)
        dur += float(r.stdout.strip())
    wall, cpu = time.perf_counter() - t0, cpu_children() - k0
    fresh = dur / wall
    print(f"process per utterance    {args.fresh:4d} utt  {dur:7.1f} s audio  {fresh:7.1f}x real time (wall)  "
          f"{dur / cpu:7.1f}x (CPU)")
    print(f"ratio: corpus writer (2 workers) / process per utterance = {results[2] / fresh:.1f}x; "
          f"corpus writer (2 workers) / in-process = {results[2] / raw:.2f}x")


if __name__ == "__main__":
    main()
