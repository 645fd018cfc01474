"""A rough run-time estimate for ``codeclens run --check``: audio hours × measured speeds.

The speeds are real-time factors (seconds of audio processed per second) measured on the
2-core CPU recorded in docs/benchmarks.md where we measured them, and stated assumptions
where we could not (marked ``assumed``). A GPU figure is a multiple of the CPU one for the
codec and labeller steps, an estimate, not a promise. The point is the order of magnitude: a
study that would take two days on a laptop should say so before it starts.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..spec import parse_spec

CODEC_XRT = {"melrvq": 529.0, "encodec": 15.8, "dac": 8.0, "mimi": 10.0, "speechtokenizer": 4.0,
             "xcodec": 3.0, "bigcodec": 3.0}
"""CPU real-time factor of encoding, full-size model (melrvq and EnCodec measured; others assumed)."""
TINY_SPEEDUP = 10.0
"""``size=tiny`` random controls run about this much faster (assumed)."""
LABEL_XRT = {"f0": 23.7, "units": 10.0, "loudness": 400.0, "phone": 5000.0, "speaker": 50.0}
"""CPU real-time factor of the labellers (pYIN measured; the rest assumed)."""
GPU_SPEEDUP = 15.0
"""Encoding and neural labelling on one GPU vs this CPU (assumed)."""
SECONDS_PER_SYNTHETIC_UTTERANCE = 2.7
"""Mean length of a synthetic-corpus sentence (measured on the demo corpus)."""
ANALYSIS_SECONDS = {"probes": (8.0, 6.0), "tokens": (2.0, 1.0), "tsne": (5.0, 0.0), "mi": (20.0, 10.0),
                    "sae": (30.0, 20.0), "sae-latents": (5.0, 5.0), "ablate": (20.0, 0.0), "causal": (30.0, 0.0),
                    "attributes": (120.0, 30.0)}
"""(seconds fixed, seconds per audio hour) of an analysis per store on this CPU at a study's default settings
(rough: from the demo's step times, and linear growth in frames)."""


@dataclasses.dataclass(frozen=True)
class Estimate:
    hours_audio: dict[str, float]
    """Audio hours per corpus (None-free: unknown corpora count 0 and are listed in ``unknown``)."""
    cpu_seconds: dict[str, float]
    """Estimated CPU seconds by stage: extraction, labels, analyses."""
    gpu_seconds: float
    """Total on one GPU (estimate)."""
    unknown: tuple[str, ...]
    """Corpora whose length could not be read (their steps are not in the total)."""

    @property
    def cpu_total(self) -> float:
        return float(sum(self.cpu_seconds.values()))


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def corpus_hours(spec: str, limit: int | None = None) -> float | None:
    """Audio hours of a corpus from file headers (no audio is decoded); None if unreadable."""
    s = parse_spec(spec)
    if s.kind == "synthetic":
        n = s.get("n", 200, int)
        n = min(n, limit) if limit else n
        return n * SECONDS_PER_SYNTHETIC_UTTERANCE / 3600
    try:
        import soundfile as sf

        from ..corpora import load_corpus

        total = 0.0
        for i, u in enumerate(load_corpus(spec)):
            if limit is not None and i >= limit:
                break
            if u.start is not None and u.end is not None:
                total += u.end - u.start
            else:
                total += sf.info(u.path).duration
        return total / 3600
    except Exception:  # an estimate must never stop a check; the run itself reports the cause
        return None


def _codec_xrt(spec: str) -> float:
    s = parse_spec(spec)
    kind = s.kind if s.kind != "python" else "bigcodec"
    x = CODEC_XRT.get(kind, 5.0)
    return x * TINY_SPEEDUP if s.get("size", "") == "tiny" else x


def _label_names(opts: dict[str, Any]) -> list[str]:
    labels = opts.get("labels", ("auto",))
    names = [str(l).split("?", 1)[0] for l in labels]
    if "auto" in names:
        names = [n for n in names if n != "auto"] + ["phone", "f0", "loudness"]
    return [n for n in names if n != "none"]


def estimate(study) -> Estimate:
    hours: dict[str, float] = {}
    unknown = []
    for c in study.corpora:
        h = corpus_hours(c.spec, c.limit)
        if h is None:
            unknown.append(c.name)
        hours[c.name] = h or 0.0
    ext = lab = ana = gpu = 0.0
    for c in study.corpora:
        sec = hours[c.name] * 3600
        for k in study.codecs:
            e = sec / _codec_xrt(k.spec)
            opts = study.extract_options(c.name, k.name)
            l = sum(sec / LABEL_XRT.get(n, 50.0) for n in _label_names(opts))
            ext, lab = ext + e, lab + l
            gpu += (e + l) / GPU_SPEEDUP
    for a in study.analyses:
        fixed, per_hour = ANALYSIS_SECONDS.get(a.kind, (60.0, 2.0))
        corpora = a.corpora or tuple(c.name for c in study.corpora)
        n_codecs = len(a.codecs or study.codecs)
        t = sum(n_codecs * (fixed + per_hour * hours.get(c, 0.0)) for c in corpora)
        ana += t
        gpu += t / 3
    return Estimate(hours, {"extraction": ext, "labels": lab, "analyses": ana}, gpu, tuple(unknown))


def describe(est: Estimate) -> str:
    parts = ", ".join(f"{k} {human(v)}" for k, v in est.cpu_seconds.items())
    hours = ", ".join(f"{k} {v:.2f} h" for k, v in est.hours_audio.items())
    line = (f"estimated run time on this CPU: ~{human(est.cpu_total)} ({parts}); on one GPU ~{human(est.gpu_seconds)} "
            f"(an estimate); audio: {hours}")
    if est.unknown:
        line += f"; length unknown for {', '.join(est.unknown)} (not counted)"
    return line
