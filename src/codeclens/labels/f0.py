"""``f0`` labeller: fundamental frequency with a real voicing decision.

An analysis track is computed every ``hop`` seconds (10 ms) on 16 kHz audio,
then carried to the codec's frames **by time**: frame ``t`` (span
``[t - 0.5/fr, t + 0.5/fr)``) is voiced when at least half of the analysis
frames inside its span are voiced, and its F0 is the geometric mean of those
voiced analysis values; a span holding no analysis frame (codec frame rate above
1/hop) takes the analysis frame nearest its centre. Unvoiced frames get NaN F0,
never a value.

Methods:

* ``method=pyin`` (default): librosa's probabilistic YIN; voicing is pYIN's own
  HMM decision. ``resolution`` (semitones per pitch bin, default 0.2: bin
  centres are at most 10 cents, 0.6 %, from the truth) trades precision for
  speed (the HMM is quadratic in the number of bins).
* ``method=crepe``: torchcrepe (weights ship with the package; ``model=full`` or
  ``tiny``) with Viterbi decoding; a frame is voiced when CREPE's periodicity is
  at least ``threshold`` (default 0.5).

Both also mark frames quieter than ``silence_db`` (RMS dBFS over the analysis
window, default -60) unvoiced, so silence and empty audio are all unvoiced.

The pitch window is long (64 ms for ``fmin`` = 50 Hz), so from inside a pause it
still reaches the neighbouring vowel. The voicing of a codec frame is therefore
confirmed **locally**, on a window of one codec frame around its centre (at least
two periods of its F0): the frame stays voiced only if that window is louder than
``silence_db`` and periodic at the frame's F0 (normalised autocorrelation at the
period at least ``periodicity``, default 0.5; see :func:`local_voicing`). Silence
next to a vowel is unvoiced.

Frame columns: ``f0_hz`` (float, NaN unvoiced), ``f0_cents`` (cents re 55 Hz,
``1200*log2(f0/55)``, NaN unvoiced), ``voiced`` (bool). Utterance columns:
``f0_median_hz`` (median over voiced analysis frames, NaN if none) and
``voiced_fraction``.

Options: ``method``, ``fmin`` (Hz, default 50), ``fmax`` (default 600),
``resolution`` (pyin), ``threshold``, ``model``, ``device`` (crepe),
``silence_db``, ``periodicity``, ``hop`` (seconds, default 0.01), ``refine`` (default true: sharpen the
bin-centre F0 of either method to a sub-sample period by parabolic interpolation of the
squared-difference function, see :func:`refine_f0`).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import warnings
from typing import Any

import numpy as np

from ..audio import resample
from ..corpora.base import Utterance
from ..errors import CodeclensError
from . import LABELLERS
from .base import Labeller

ANALYSIS_SR = 16000
CENTS_REF_HZ = 55.0


@dataclasses.dataclass(frozen=True)
class PitchTrack:
    """F0 every ``hop`` seconds; ``f0`` is NaN wherever ``voiced`` is False."""

    times: np.ndarray
    f0: np.ndarray
    voiced: np.ndarray


def hz_to_cents(f0: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return 1200.0 * np.log2(np.asarray(f0, dtype=np.float64) / CENTS_REF_HZ)


def frame_rms_db(audio: np.ndarray, centers: np.ndarray, half: int) -> np.ndarray:
    """RMS level (dBFS, floor -100) of ``audio[c-half : c+half]`` for each centre sample ``c``."""
    x = np.asarray(audio, dtype=np.float64)
    cs = np.concatenate([[0.0], np.cumsum(x * x)])
    a = np.clip(centers - half, 0, len(x))
    b = np.clip(centers + half, 0, len(x))
    n = np.maximum(b - a, 1)
    power = (cs[b] - cs[a]) / n
    return 10.0 * np.log10(np.maximum(power, 1e-10))


def track_to_frames(track: PitchTrack, times: np.ndarray, frame_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """(f0 Hz with NaN on unvoiced, voiced) at codec frames centred on ``times`` (see module docs)."""
    times = np.asarray(times, dtype=np.float64)
    n = len(times)
    if n == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    if len(track.times) == 0:
        return np.full(n, np.nan), np.zeros(n, dtype=bool)
    half = 0.5 / float(frame_rate)
    a = np.searchsorted(track.times, times - half, side="left")
    b = np.searchsorted(track.times, times + half, side="left")
    v = track.voiced.astype(np.float64)
    logf = np.where(track.voiced, np.log2(np.where(track.voiced, track.f0, 1.0)), 0.0)
    cv = np.concatenate([[0.0], np.cumsum(v)])
    cl = np.concatenate([[0.0], np.cumsum(logf)])
    count = b - a
    n_voiced = cv[b] - cv[a]
    voiced = (count > 0) & (n_voiced >= 0.5 * count) & (n_voiced > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f0 = np.where(voiced, 2.0 ** ((cl[b] - cl[a]) / np.maximum(n_voiced, 1)), np.nan)
    empty = count == 0
    if empty.any():
        # Spans shorter than the analysis hop: the analysis frame nearest the centre.
        te = times[empty]
        j = np.clip(np.searchsorted(track.times, te), 0, len(track.times) - 1)
        jl = np.clip(j - 1, 0, None)
        j = np.where(np.abs(te - track.times[jl]) <= np.abs(track.times[j] - te), jl, j)
        voiced[empty] = track.voiced[j]
        f0[empty] = np.where(track.voiced[j], track.f0[j], np.nan)
    return f0, voiced


def local_voicing(
    x: np.ndarray, sr: int, times: np.ndarray, f0: np.ndarray, frame_rate: float, silence_db: float,
    min_periodicity: float,
) -> np.ndarray:
    """Which frames are voiced by their own audio: loud enough and periodic at their F0.

    For each frame centred at ``times`` (s) with a finite ``f0``, the window is one
    codec frame (``1/frame_rate``) or two periods, whichever is longer. Loudness: RMS
    over that window >= ``silence_db`` dBFS. Periodicity: the normalised
    autocorrelation ``sum(a*b) / sqrt(sum(a^2) sum(b^2))`` of the window ``a`` and
    the same window one period later ``b`` (best of the two integer lags around the
    period), >= ``min_periodicity``. Digital silence scores 0, noise about 0, a
    steady vowel close to 1. Frames without F0 are False.
    """
    x = np.asarray(x, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    out = np.zeros(len(times), dtype=bool)
    ok = np.flatnonzero(np.isfinite(f0) & (f0 > 0))
    if len(ok) == 0 or len(x) == 0:
        return out
    period = sr / np.asarray(f0, dtype=np.float64)[ok]
    frame = max(int(round(sr / float(frame_rate))), 1)
    win = int(max(frame, 2 * np.ceil(period.max())))
    centers = np.round(times[ok] * sr).astype(np.int64)
    loud = frame_rms_db(x, centers, max(frame // 2, 1)) >= silence_db
    pad = win + int(np.ceil(period.max())) + 2
    xp = np.pad(x, (pad, pad))
    start = centers - win // 2 + pad
    j = np.arange(win)
    a = xp[start[:, None] + j[None, :]]
    ea = (a * a).sum(axis=1)
    best = np.zeros(len(ok))
    for lag in (np.floor(period), np.ceil(period)):
        b = xp[start[:, None] + j[None, :] + lag.astype(np.int64)[:, None]]
        den = np.sqrt(ea * (b * b).sum(axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.where(den > 0, (a * b).sum(axis=1) / den, 0.0)
        best = np.maximum(best, r)
    out[ok] = loud & (best >= min_periodicity)
    return out


def refine_f0(x: np.ndarray, centers: np.ndarray, f0: np.ndarray, sr: int, window: int) -> np.ndarray:
    """Sharpen pitch-bin F0 estimates to sub-sample periods.

    pYIN and CREPE report the centre of a pitch bin (0.2 semitone / 20 cents wide).
    Around each estimate's period P the squared-difference function
    ``d(tau) = sum_j (x[s+j] - x[s+j+tau])^2`` over ``window`` samples is evaluated at
    integer lags P-3..P+4 and its minimum located by parabolic interpolation.
    The refined value is kept only within 40 cents of the estimate, so the refinement
    can sharpen a pitch but never move it to another harmonic. NaN stays NaN.
    """
    f0 = np.asarray(f0, dtype=np.float64).copy()
    ok = np.flatnonzero(np.isfinite(f0) & (f0 > 0))
    if len(ok) == 0:
        return f0
    period = sr / f0[ok]
    base = np.floor(period).astype(np.int64) - 3
    n_lags = 8
    pad = window + int(period.max()) + n_lags + 2
    xp = np.pad(np.asarray(x, dtype=np.float64), (pad, pad))
    start = centers[ok].astype(np.int64) - window // 2 + pad
    j = np.arange(window)
    seg = xp[start[:, None] + j[None, :]]
    d = np.empty((len(ok), n_lags))
    for k in range(n_lags):
        d[:, k] = np.sum((seg - xp[start[:, None] + j[None, :] + (base + k)[:, None]]) ** 2, axis=1)
    m = np.clip(np.argmin(d[:, 1:-1], axis=1) + 1, 1, n_lags - 2)
    r = np.arange(len(ok))
    a, b, c = d[r, m - 1], d[r, m], d[r, m + 1]
    denom = a - 2 * b + c
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = np.where(denom > 0, 0.5 * (a - c) / denom, 0.0)
    refined = sr / (base + m + np.clip(delta, -1, 1))
    close = np.abs(1200 * np.log2(refined / f0[ok])) < 40
    f0[ok] = np.where(close, refined, f0[ok])
    return f0


def _import_torchcrepe():
    """torchcrepe imports torchaudio at load, only to read files (which we never ask it to);
    torchaudio does not import beside our torch, so a placeholder module stands in meanwhile."""
    if "torchcrepe" in sys.modules:
        return sys.modules["torchcrepe"]
    added = "torchaudio" not in sys.modules
    if added:
        sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        import torchcrepe
    except ImportError as e:
        raise CodeclensError(f"f0: method=crepe needs torchcrepe ({e})") from None
    finally:
        if added:
            sys.modules.pop("torchaudio", None)
    return torchcrepe


@LABELLERS.register("f0")
class F0Labeller(Labeller):
    """F0 (Hz and cents) and voicing per codec frame."""

    options = ("method", "fmin", "fmax", "resolution", "threshold", "model", "device", "silence_db", "periodicity",
               "hop", "refine")

    def __init__(self, spec):
        super().__init__(spec)
        self.method = spec.get("method", "pyin")
        self.fmin = spec.get("fmin", 50.0, float)
        self.fmax = spec.get("fmax", 600.0, float)
        self.resolution = spec.get("resolution", 0.2, float)
        self.threshold = spec.get("threshold", 0.5, float)
        self.model = spec.get("model", "full")
        self.device = spec.get("device", "auto")
        self.silence_db = spec.get("silence_db", -60.0, float)
        self.periodicity = spec.get("periodicity", 0.5, float)
        self.hop = spec.get("hop", 0.01, float)
        self.refine = spec.get("refine", True, bool)
        if self.method not in ("pyin", "crepe"):
            raise CodeclensError(f"f0: unknown method '{self.method}'; known: crepe, pyin")
        if not 0 < self.fmin < self.fmax:
            raise CodeclensError(f"f0: need 0 < fmin < fmax (got fmin={self.fmin}, fmax={self.fmax})")
        if self.fmax >= ANALYSIS_SR / 2:
            raise CodeclensError(f"f0: fmax must be below {ANALYSIS_SR // 2} Hz")
        if self.model not in ("full", "tiny"):
            raise CodeclensError(f"f0: model must be full or tiny (got '{self.model}')")
        if not 0 < self.resolution <= 1:
            raise CodeclensError("f0: resolution must be in (0, 1] semitones")
        if not 0 <= self.threshold <= 1:
            raise CodeclensError("f0: threshold must be in [0, 1]")
        if not 0 <= self.periodicity < 1:
            raise CodeclensError("f0: periodicity must be in [0, 1)")
        if not 0.001 <= self.hop <= 0.05:
            raise CodeclensError("f0: hop must be between 0.001 and 0.05 s")
        self._cache: tuple[Any, PitchTrack, np.ndarray] | None = None

    # -- analysis track ------------------------------------------------------
    def track(self, audio: np.ndarray, sample_rate: int) -> PitchTrack:
        """The analysis track of one signal (16 kHz internally)."""
        x = resample(np.asarray(audio, dtype=np.float32), int(sample_rate), ANALYSIS_SR)
        hop = max(1, int(round(self.hop * ANALYSIS_SR)))
        n = len(x)
        if n == 0:
            return PitchTrack(np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))
        n_frames = 1 + n // hop
        times = np.arange(n_frames) * hop / ANALYSIS_SR
        if self.method == "pyin":
            f0, voiced, win = self._pyin(x, hop, n_frames)
        else:
            f0, voiced, win = self._crepe(x, hop, n_frames)
        centers = np.arange(n_frames) * hop
        loud = frame_rms_db(x, centers, win // 2)
        if self.refine:
            f0 = refine_f0(x, centers, np.where(voiced, f0, np.nan), ANALYSIS_SR, win // 2)
        voiced = voiced & (loud >= self.silence_db) & np.isfinite(f0) & (f0 > 0)
        f0 = np.where(voiced, f0, np.nan)
        return PitchTrack(times, f0.astype(np.float64), voiced.astype(bool))

    def _pyin(self, x: np.ndarray, hop: int, n_frames: int):
        import librosa

        # Two periods of fmin must fit the window; powers of two keep the FFTs fast.
        win = int(2 ** np.ceil(np.log2(max(2.2 * ANALYSIS_SR / self.fmin, 4 * hop))))
        if not np.any(x):
            return np.full(n_frames, np.nan), np.zeros(n_frames, dtype=bool), win
        y = np.pad(x, (0, max(0, win - len(x))))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f0, vflag, _ = librosa.pyin(
                y, fmin=self.fmin, fmax=self.fmax, sr=ANALYSIS_SR, frame_length=win, hop_length=hop,
                resolution=self.resolution, center=True, fill_na=np.nan,
            )
        return _fit(f0, n_frames, np.nan), _fit(vflag.astype(bool), n_frames, False), win

    def _crepe(self, x: np.ndarray, hop: int, n_frames: int):
        import torch

        from ..util.device import resolve_device

        torchcrepe = _import_torchcrepe()
        dev = resolve_device(self.device)
        audio = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None]
        f0, per = torchcrepe.predict(
            audio, ANALYSIS_SR, hop_length=hop, fmin=self.fmin, fmax=self.fmax, model=self.model,
            decoder=torchcrepe.decode.viterbi, return_periodicity=True, batch_size=1024,
            device=str(dev), pad=True,
        )
        f0 = f0[0].double().cpu().numpy()
        per = per[0].double().cpu().numpy()
        # A short median filter stops single-frame periodicity flickers toggling voicing.
        if len(per) >= 3:
            import scipy.signal

            per = scipy.signal.medfilt(per, 3)
        return _fit(f0, n_frames, np.nan), _fit(per >= self.threshold, n_frames, False), 1024

    def _cached_track(self, utt: Utterance, audio: np.ndarray, sample_rate: int) -> PitchTrack:
        return self._cached(utt, audio, sample_rate)[0]

    def _cached(self, utt: Utterance, audio: np.ndarray, sample_rate: int) -> tuple[PitchTrack, np.ndarray]:
        """(track, 16 kHz audio) of an utterance, computed once for its frame and utterance labels."""
        key = (utt.id, utt.path, len(audio), int(sample_rate))
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1], self._cache[2]
        tr = self.track(audio, sample_rate)
        x = resample(np.asarray(audio, dtype=np.float32), int(sample_rate), ANALYSIS_SR)
        self._cache = (key, tr, x)
        return tr, x

    # -- labeller contract ---------------------------------------------------
    def frame_labels(self, utt, audio, sample_rate, times, frame_rate) -> dict[str, np.ndarray]:
        track, x = self._cached(utt, audio, sample_rate)
        f0, voiced = track_to_frames(track, times, frame_rate)
        # The track's window reaches neighbouring vowels from inside a pause: confirm at the frame.
        voiced &= local_voicing(x, ANALYSIS_SR, times, f0, frame_rate, self.silence_db, self.periodicity)
        f0 = np.where(voiced, f0, np.nan)
        return {"f0_hz": f0, "f0_cents": hz_to_cents(f0), "voiced": voiced.astype(bool)}

    def utterance_labels(self, utt, audio, sample_rate) -> dict[str, Any]:
        tr = self._cached_track(utt, audio, sample_rate)
        has = bool(tr.voiced.any())
        return {
            "f0_median_hz": float(np.median(tr.f0[tr.voiced])) if has else float("nan"),
            "voiced_fraction": float(tr.voiced.mean()) if len(tr.voiced) else 0.0,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "spec": str(self.spec), "method": self.method, "fmin": self.fmin, "fmax": self.fmax,
            "silence_db": self.silence_db, "periodicity": self.periodicity,
            "columns": ["f0_hz", "f0_cents", "voiced"], "cents_reference_hz": CENTS_REF_HZ,
        }


def _fit(a: np.ndarray, n: int, fill) -> np.ndarray:
    """Trim or pad a per-frame array to n frames (estimators differ by a frame at the end)."""
    a = np.asarray(a)
    if len(a) >= n:
        return a[:n]
    return np.concatenate([a, np.full(n - len(a), fill, dtype=a.dtype)])
