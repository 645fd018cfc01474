"""The adapter invariants, measured on any loadable codec (``codeclens codec check SPEC``).

Each check returns a :class:`CheckResult` with what was measured and what the contract
requires. They are the same checks the test suite runs on every built-in adapter, so a
user wrapping their own codec runs them first:

- ``frame rate``: frames added per second of added audio equal ``frame_rate``;
- ``frame count``: utterances of awkward lengths get exactly the frames the codec
  declares (``frames_for(N)``, else ``ceil(N / hop)``);
- ``lookup = quantized``: the sum of table rows equals ``quantized()`` (all layers and
  a subset), for encoded and arbitrary codes;
- ``decode = model decode``: ``decode()`` equals the adapter's ``reference_decode()``
  (the model's own decode), when it has one;
- ``dropped layers``: a dropped layer's codes change nothing; dropping layer 1 changes
  the decode (it is not ignored);
- ``batch independence``: an utterance's codes do not depend on the rest of the batch
  nor on padding values;
- ``frame offset``: the measured frame-centre offset (:func:`measure_frame_offset`)
  agrees with the declared ``frame_offset`` to half a frame (the resolution of labels).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch

from .base import CodecAdapter
from .calibration import calibration_audio

#: Relative tolerance of the float identities (sum of lookups, decodes).
REL_TOL = 1e-4


@dataclasses.dataclass(frozen=True)
class CheckResult:
    """One invariant on one codec."""

    name: str
    """Short name of the invariant."""
    passed: bool | None
    """True/False; None when it does not apply (e.g. no reference decode)."""
    measured: str
    """What was measured, with numbers."""
    expected: str
    """What the contract requires."""


def expected_frames(codec: CodecAdapter, n_samples: int) -> int:
    fn = getattr(codec, "frames_for", None)
    return int(fn(n_samples)) if fn is not None else math.ceil(n_samples * codec.frame_rate / codec.sample_rate - 1e-9)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    if a.shape != b.shape:
        return float("inf")
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def batch_of(items: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-padded ``[B, N]`` waves and their lengths."""
    lengths = torch.tensor([len(x) for x in items])
    waves = torch.zeros(len(items), int(lengths.max()))
    for i, x in enumerate(items):
        waves[i, : len(x)] = x
    return waves, lengths


def _audio(codec: CodecAdapter, seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(calibration_audio(int(codec.sample_rate), seconds, seed))


def _hop(codec: CodecAdapter) -> int:
    return int(round(codec.sample_rate / codec.frame_rate))


@torch.no_grad()
def check_frame_rate(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    hop = _hop(codec)
    n1 = max(1, int(seconds * codec.sample_rate) // 2 // hop) * hop
    n2 = n1 + 8 * hop
    x = _audio(codec, n2 / codec.sample_rate + 0.01, seed)
    t1 = int(codec.encode(*batch_of([x[:n1]]))[1][0])
    t2 = int(codec.encode(*batch_of([x[:n2]]))[1][0])
    rate = (t2 - t1) * codec.sample_rate / (n2 - n1)
    ok = abs(rate - codec.frame_rate) < 1e-6 * codec.frame_rate
    return CheckResult("frame rate", ok, f"{rate:g} Hz ({t2 - t1} frames per {n2 - n1} samples)",
                       f"{codec.frame_rate:g} Hz")


@torch.no_grad()
def check_frame_counts(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    hop = _hop(codec)
    k = max(2, int(seconds * codec.sample_rate) // hop)
    lengths = [k * hop, k * hop + 1, k * hop - 1, k * hop + hop // 2]
    x = _audio(codec, (max(lengths) + 1) / codec.sample_rate + 0.01, seed)
    got, want = [], []
    for n in lengths:
        try:
            codes, nf = codec.encode(*batch_of([x[:n]]))
            got.append((int(nf[0]), int(codes.shape[-1])))
        except Exception as e:  # noqa: BLE001 - a codec that refuses its own frame count fails here
            return CheckResult("frame count", False, f"N={n}: {str(e).splitlines()[0][:120]}", "exact")
        want.append(expected_frames(codec, n))
    ok = all(g == (w, w) for g, w in zip(got, want))
    return CheckResult("frame count", ok, "N=" + ",".join(map(str, lengths)) + " -> " + ",".join(str(g[0]) for g in got),
                       ",".join(map(str, want)) + " (exact)")


@torch.no_grad()
def check_lookup(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    x = _audio(codec, seconds, seed)
    codes, _ = codec.encode(*batch_of([x]))
    g = torch.Generator().manual_seed(seed)
    arbitrary = torch.stack([torch.randint(0, k, (1, codes.shape[2]), generator=g) for k in codec.codebook_sizes], 1)
    subset = sorted({0, codec.n_layers - 1})
    worst = 0.0
    for c in (codes, arbitrary.to(codes.device)):
        worst = max(worst, rel_err(codec.lookup(c), codec.quantized(c)),
                    rel_err(codec.lookup(c, subset), codec.quantized(c, subset)))
    return CheckResult("lookup = quantized", worst < REL_TOL, f"max rel err {worst:.1e}", f"< {REL_TOL:g}")


@torch.no_grad()
def check_decode(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    ref = getattr(codec, "reference_decode", None)
    if ref is None:
        return CheckResult("decode = model decode", None, "no reference_decode()", "-")
    codes, _ = codec.encode(*batch_of([_audio(codec, seconds, seed)]))
    e = rel_err(codec.decode(codes), ref(codes))
    return CheckResult("decode = model decode", e < REL_TOL, f"max rel err {e:.1e}", f"< {REL_TOL:g}")


@torch.no_grad()
def check_dropped_layers(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    codes, _ = codec.encode(*batch_of([_audio(codec, seconds, seed)]))
    full = codec.decode(codes)
    if codec.n_layers == 1:
        silent = codec.decode(codes, layers=[])
        e = rel_err(codec.decode((codes + 1) % codec.codebook_sizes[0], layers=[]), silent)
        return CheckResult("dropped layers", e < REL_TOL, f"scrambled dropped layer: rel change {e:.1e}", "0")
    keep = list(range(1, codec.n_layers))
    dropped = codec.decode(codes, layers=keep)
    scrambled = codes.clone()
    scrambled[:, 0] = (codes[:, 0] + 1) % codec.codebook_sizes[0]
    e = rel_err(codec.decode(scrambled, layers=keep), dropped)
    effect = float((dropped - full).norm() / full.norm().clamp(min=1e-12))
    ok = e < REL_TOL and effect > 1e-6
    return CheckResult("dropped layers", ok, f"scrambled dropped layer: rel change {e:.1e}; dropping layer 1: {effect:.2g}",
                       f"0 (< {REL_TOL:g}); > 1e-6")


@torch.no_grad()
def check_batch_independence(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    hop = _hop(codec)
    short = _audio(codec, seconds * 0.4 + 0.01, seed + 1)[: max(hop, int(seconds * 0.4 * codec.sample_rate)) + 11]
    long = _audio(codec, seconds, seed + 2)
    alone, n_alone = codec.encode(*batch_of([short]))
    waves, lengths = batch_of([long, short])
    both, n_both = codec.encode(waves, lengths)
    t = int(n_alone[0])
    waves2 = waves.clone()
    waves2[1, len(short):] = 0.5
    other, _ = codec.encode(waves2, lengths)
    same = int(n_both[1]) == t and torch.equal(alone[0, :, :t], both[1, :, :t]) and torch.equal(alone[0, :, :t], other[1, :, :t])
    differ = int((alone[0, :, :t] != both[1, :, :t]).sum()) if int(n_both[1]) == t else -1
    return CheckResult("batch independence", same, f"{differ} codes differ" if differ >= 0 else "frame counts differ",
                       "0 codes differ")


@dataclasses.dataclass(frozen=True)
class FrameOffset:
    """Where a middle frame's input sensitivity lies, relative to its nominal span."""

    offset_s: float
    """Effective centre minus nominal centre ``(k + 0.5) * hop``, seconds."""
    rule: str
    """'causal' (sees nothing past its nominal end; centre = end - hop/2), 'support'
    (finite two-sided support; centre = its midpoint) or 'centroid' (support spans the
    whole input, e.g. an LSTM, attention or a whole-chunk norm; centre = sensitivity centroid)."""
    support: tuple[int, int]
    """First and last input sample that moves the frame, relative to the frame's nominal start."""


def measure_frame_offset(codec: CodecAdapter, seconds: float = 4.0, seed: int = 0,
                         latent: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FrameOffset:
    """Impulse-response test of a middle frame k: ``g(p) = |d latent_k / d x_p|^2`` for every
    input sample p at once (one backward pass per random readout of the frame).

    Its support is weight-independent for convolutions: a causal encoder's frame sees no
    sample past ``(k + 1) * hop - 1``, a centred one's support is symmetric about the frame's
    centre. When the support spans the whole input (LSTMs, attention, a norm over the
    chunk), the centre is the centroid ``sum p g(p) / sum g(p)`` instead. ``latent``
    (``x [1, N] -> [T, D]``) defaults to the adapter's pre-quantization latent.
    """
    hop = _hop(codec)
    n = max(8, int(seconds * codec.sample_rate) // hop) * hop
    x = _audio(codec, n / codec.sample_rate + 0.01, seed)[:n].to(codec.device)[None].clone().requires_grad_(True)
    if latent is None:
        latent = getattr(codec, "_latent_one", None)
        if latent is None:
            raise NotImplementedError(f"{type(codec).__name__} has no single-utterance latent to differentiate")
    g = torch.Generator().manual_seed(seed)
    sens = torch.zeros(n, dtype=torch.float64)
    with torch.enable_grad():
        z = latent(x)
        k = z.shape[0] // 2
        for _ in range(4):
            w = torch.randn(z.shape[1], generator=g).to(z)
            (grad,) = torch.autograd.grad((z[k] * w).sum(), x, retain_graph=True)
            sens += grad[0].detach().double().cpu() ** 2
    if not bool(sens.max() > 0):
        raise NotImplementedError(f"{type(codec).__name__}: the latent does not depend on the input through autograd")
    # Exactly zero outside a convolution's receptive field; recurrent and attention layers
    # leave (tiny) nonzero sensitivity everywhere, which makes the support the whole input.
    nz = torch.nonzero(sens > 0)[:, 0]
    a, b = int(nz[0]), int(nz[-1])
    declared = float(getattr(codec, "frame_offset", 0.0))
    nominal = (float(codec.frame_times(z.shape[0])[k]) - declared) * codec.sample_rate  # chunked codecs
    start = int(round(nominal - 0.5 * hop))
    lo, hi = 0, n  # the span the frame could see: the utterance, or its chunk (EnCodec 48 kHz)
    for o, m in getattr(codec, "chunks", lambda n: [(0, n)])(n):
        if o <= nominal < o + m:
            lo, hi = o, o + m
    if b == start + hop - 1:
        rule, centre = "causal", b + 1 - 0.5 * hop
    elif a > lo + hop and b < hi - 1 - hop:
        rule, centre = "support", 0.5 * (a + b + 1)
    else:
        p = torch.arange(n, dtype=torch.float64) + 0.5  # sample i spans [i, i + 1)
        rule, centre = "centroid", float((p * sens).sum() / sens.sum())
    return FrameOffset((centre - nominal) / codec.sample_rate, rule, (a - start, b - start))


def check_frame_offset(codec: CodecAdapter, seconds: float, seed: int) -> CheckResult:
    declared = float(getattr(codec, "frame_offset", 0.0))
    try:
        m = measure_frame_offset(codec, max(seconds, 4.0), seed)
    except NotImplementedError as e:
        return CheckResult("frame offset", None, str(e), f"{declared * 1000:+.2f} ms")
    tol = 0.5 / codec.frame_rate
    # A whole-input support's centroid depends on the weights (random ones here): reported, not judged.
    ok = None if m.rule == "centroid" else abs(m.offset_s - declared) <= tol
    return CheckResult("frame offset", ok,
                       f"{m.offset_s * 1000:+.2f} ms ({m.rule}; support {m.support[0]}..{m.support[1]} samples)",
                       f"{declared * 1000:+.2f} ms +- {tol * 1000:.1f} (half a frame)")


CHECKS = {
    "frame rate": check_frame_rate,
    "frame count": check_frame_counts,
    "lookup = quantized": check_lookup,
    "decode = model decode": check_decode,
    "dropped layers": check_dropped_layers,
    "batch independence": check_batch_independence,
    "frame offset": check_frame_offset,
}


def run_checks(codec: CodecAdapter, seconds: float = 1.0, seed: int = 0, only: list[str] | None = None) -> list[CheckResult]:
    """Every invariant (or those named in ``only``) on ``codec``; a check that raises fails."""
    out = []
    for name, fn in CHECKS.items():
        if only is not None and name not in only:
            continue
        try:
            out.append(fn(codec, seconds, seed))
        except Exception as e:  # noqa: BLE001 - a broken codec is a failed check, not a crash
            out.append(CheckResult(name, False, f"raised {type(e).__name__}: {str(e).splitlines()[0][:150] if str(e) else ''}", "no error"))
    return out


def format_table(results: list[CheckResult]) -> str:
    rows = [("check", "result", "measured", "expected")]
    for r in results:
        rows.append((r.name, {True: "pass", False: "FAIL", None: "n/a"}[r.passed], r.measured, r.expected))
    w = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{w[0]}}  {b:<{w[1]}}  {c:<{w[2]}}  {d}" for a, b, c, d in rows)


__all__ = ["CHECKS", "CheckResult", "format_table", "FrameOffset", "measure_frame_offset", "run_checks", "expected_frames"]
