"""Decodes per second of the causal Shapley attribution (all 2^L layer subsets) on a small codec,
with the decode of each subset shared by every measure (what ``causal`` does) against one decode
per subset per measure (the obvious loop: each measure its own game), in one run.

Both sides compute the same Shapley values (checked: identical); the shared side makes 2^L
decodes, the other M x 2^L for M measures. Decode time and measure time are reported
separately (wall and CPU), so the saving is visible where it is made.

    .venv/bin/python benchmarks/causal_decodes.py [--spec encodec:24khz@3kbps?size=tiny&random_init=1] [--seconds 1]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from codeclens.util.provenance import cpu_model


class Clock:
    """Wall and CPU seconds spent in decodes and in measures."""

    def __init__(self):
        self.decode = [0.0, 0.0]
        self.measure = [0.0, 0.0]
        self.decodes = 0

    def run(self, slot, fn, *a):
        w, c = time.perf_counter(), time.process_time()
        out = fn(*a)
        slot[0] += time.perf_counter() - w
        slot[1] += time.process_time() - c
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--spec", default="encodec:24khz@3kbps?size=tiny&random_init=1")
    ap.add_argument("--seconds", type=float, default=1.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from codeclens.analyses.ablate.engine import encode_audio
    from codeclens.analyses.ablate.measures import speaker_encoder
    from codeclens.analyses.causal.decoder import DECODER_MEASURES, Reference, decode, decode_coalition
    from codeclens.analyses.causal.shapley import exact_shapley
    from codeclens.codecs import load_codec
    from codeclens.codecs.calibration import calibration_audio

    codec = load_codec(args.spec, "cpu")
    sr, L = int(codec.sample_rate), int(codec.n_layers)
    codes = encode_audio(codec, calibration_audio(sr, args.seconds, seed=0))
    enc = speaker_encoder("cpu")
    ref = Reference(decode(codec, codes), sr, enc)
    measures = DECODER_MEASURES
    mean = np.zeros(L, dtype=np.int64)
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}; load average {os.getloadavg()[0]:.1f}; "
          f"torch threads {args.threads}")
    print(f"codec {args.spec}: {L} layers, {len(codes)} frames ({args.seconds:g} s); {1 << L} subsets; "
          f"measures {', '.join(measures)}\n")

    def dec(clock, m):
        clock.decodes += 1
        return clock.run(clock.decode, decode_coalition, codec, codes, m, "drop", mean, None)

    # shared: one decode per subset, every measure read from it
    shared = Clock()
    cache: dict[int, np.ndarray] = {}

    def value(m: int) -> np.ndarray:
        if m not in cache:
            audio = dec(shared, m)
            cache[m] = shared.run(shared.measure, ref.measure, audio, measures)
        return cache[m]

    phi_shared = exact_shapley(value, L)

    # unshared: each measure its own game, decoding every subset again
    alone = Clock()
    phi_alone = np.zeros_like(phi_shared)
    for j, meas in enumerate(measures):
        own: dict[int, np.ndarray] = {}

        def value_j(m: int) -> np.ndarray:
            if m not in own:
                own[m] = alone.run(alone.measure, ref.measure, dec(alone, m), (meas,))
            return own[m]

        phi_alone[:, j] = exact_shapley(value_j, L)[:, 0]
    assert np.array_equal(phi_shared, phi_alone), "the two sides must give the same Shapley values"

    print(f"{'side':<34} {'decodes':>8} {'decode s (wall/cpu)':>20} {'decodes/s':>10} "
          f"{'measure s (wall/cpu)':>21} {'total s':>8}")
    for name, c in (("shared cache (causal)", shared), ("one decode per measure", alone)):
        tot = c.decode[0] + c.measure[0]
        print(f"{name:<34} {c.decodes:>8} {c.decode[0]:>9.2f} / {c.decode[1]:<8.2f} {c.decodes / c.decode[0]:>10.1f} "
              f"{c.measure[0]:>10.2f} / {c.measure[1]:<8.2f} {tot:>8.2f}")
    t_s, t_a = shared.decode[0] + shared.measure[0], alone.decode[0] + alone.measure[0]
    print(f"\ncache saving: {alone.decodes / shared.decodes:.1f}x fewer decodes, "
          f"{alone.decode[0] / shared.decode[0]:.1f}x less decode time, {t_a / t_s:.2f}x less total time; "
          "Shapley values identical")


if __name__ == "__main__":
    main()
