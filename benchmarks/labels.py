"""Labeller speed, in x real time (seconds of audio labelled per second), against the
obvious alternatives, in one run:

- f0: our pYIN (16 kHz, 0.2-semitone bins, sub-sample refinement) vs ``librosa.pyin``
  called the obvious way (native 24 kHz, librosa's default fmin/fmax/frame length,
  0.1-semitone bins); CREPE tiny and full (CPU);
- phone: the vectorised max-overlap mapping vs a frame-by-interval Python loop;
- loudness: cumulative-sum spans vs a per-frame loop.

CPU time of this process is reported next to wall-clock time (the machine is
shared; the load average is printed).

    .venv/bin/python benchmarks/labels.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import numpy as np

from codeclens.util.provenance import cpu_model


def timed(fn, repeat: int = 1):
    fn()  # warm-up (numba / torch first-call costs are not what we measure)
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - w0) / repeat, (time.process_time() - c0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=20.0)
    args = ap.parse_args()
    warnings.simplefilter("ignore")

    import librosa

    from codeclens.codecs.calibration import calibration_audio
    from codeclens.corpora.base import Utterance
    from codeclens.labels import frame_times, load_labeller
    from codeclens.labels.loudness import rms_db
    from codeclens.labels.phones import max_overlap_labels

    sr, secs = 24000, args.seconds
    audio = calibration_audio(sr, secs, seed=0)
    fr = 75.0
    times = frame_times(int(secs * fr), fr)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; load average {os.getloadavg()[0]:.1f}")
    print(f"audio: {secs:g} s at {sr} Hz; codec frames at {fr:g} Hz\n")
    print(f"{'task':<52} {'wall x RT':>10} {'cpu x RT':>10}")

    def row(name, wall, cpu, seconds=secs):
        print(f"{name:<52} {seconds / wall:>10.1f} {seconds / cpu:>10.1f}")
        return seconds / cpu

    u = Utterance("bench", "x")
    ours = load_labeller("f0")

    def run_ours():
        ours._cache = None
        ours.frame_labels(u, audio, sr, times, fr)

    a = row("f0 pyin (ours: 16 kHz, 0.2 st bins, refined)", *timed(run_ours))
    b = row("f0 librosa.pyin defaults (24 kHz, 0.1 st bins)", *timed(
        lambda: librosa.pyin(audio, fmin=librosa.note_to_hz("C2"), fmax=librosa.note_to_hz("C7"), sr=sr)))
    print(f"  -> ours is {a / b:.1f}x faster (CPU)")
    short = audio[: int(5 * sr)]
    for model in ("tiny", "full"):
        lb = load_labeller(f"f0?method=crepe&model={model}&device=cpu")

        def run_crepe(lb=lb):
            lb._cache = None
            lb.frame_labels(u, short, sr, times[: int(5 * fr)], fr)

        row(f"f0 crepe {model} (CPU, 5 s)", *timed(run_crepe), seconds=5.0)

    rng = np.random.default_rng(0)
    edges = np.sort(rng.uniform(0, secs, int(secs * 12)))  # ~12 phones per second
    starts, ends = edges[:-1], edges[1:]
    labels = [f"p{i}" for i in range(len(starts))]

    def brute():
        half = 0.5 / fr
        out = []
        for t in times:
            best, bo = None, 1e-9
            for s, e, lab in zip(starts, ends, labels):
                ov = min(e, t + half) - max(s, t - half)
                if ov > bo:
                    best, bo = lab, ov
            out.append(best)
        return out

    a = row("phone max-overlap (vectorised)", *timed(lambda: max_overlap_labels(starts, ends, labels, times, fr), 20))
    b = row("phone max-overlap (frame x interval loop)", *timed(brute))
    print(f"  -> vectorised is {a / b:.0f}x faster (CPU)")

    def loud_loop():
        half = 0.5 / fr
        out = np.empty(len(times))
        for i, t in enumerate(times):
            a_, b_ = int(np.ceil((t - half) * sr)), int(np.ceil((t + half) * sr))
            seg = audio[max(a_, 0):min(b_, len(audio))].astype(np.float64)
            out[i] = 10 * np.log10(max(np.mean(seg * seg), 1e-10)) if len(seg) else np.nan
        return out

    a = row("loudness (cumulative sums)", *timed(lambda: rms_db(audio, sr, times, fr), 20))
    b = row("loudness (per-frame loop)", *timed(loud_loop))
    print(f"  -> cumulative sums are {a / b:.0f}x faster (CPU)")


if __name__ == "__main__":
    main()
