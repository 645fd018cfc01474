"""Measurements on decoded audio: what an intervention changed.

Each measure compares an edited decode ``hyp`` with a reference ``ref`` (the
unedited decode, or the donor for swaps). Functions take mono float arrays at
a known sample rate; the heavy models (Resemblyzer, an ASR pipeline, a phone
probe) are loaded once and passed in.

Definitions (all pure given their inputs):

- speaker similarity: cosine of Resemblyzer utterance embeddings (GE2E, the
  embeddings Sadok et al. use for their COS column);
- F0 RMSE in cents over frames voiced in *both* signals (pYIN), and voicing
  agreement = fraction of frames whose voiced/unvoiced decision matches;
- STOI (pystoi; 1 for identical signals);
- mel-cepstral distance (dB): coefficients 1..24 of the DCT of the natural-log
  mel amplitude spectrum (scaled like an FFT cepstrum), mean over frames of
  ``10/ln10 * sqrt(2 * sum(dc^2))``. It is MFCC-based, not SPTK mel-generalised
  cepstra, so values compare within codeclens, not with published MCD numbers;
- loudness change: ``20 log10(rms(hyp) / rms(ref))`` dB;
- word error rate (optional ASR): word-level Levenshtein distance / reference words.
"""

from __future__ import annotations

import dataclasses
import functools
import numpy as np
import scipy.fft

from ...audio import resample
from ...errors import CodeclensError

MEASURE_SR = 16000
"""Every measure runs at 16 kHz (Resemblyzer's and pYIN's rate here)."""


def _pair(ref: np.ndarray, hyp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop two signals to their common length (decodes can differ by a frame's padding)."""
    n = min(len(ref), len(hyp))
    return np.asarray(ref[:n], dtype=np.float64), np.asarray(hyp[:n], dtype=np.float64)


def to_measure_rate(audio: np.ndarray, sr: int) -> np.ndarray:
    return resample(np.asarray(audio, dtype=np.float32), int(sr), MEASURE_SR)


# -- speaker similarity ------------------------------------------------------------

class SpeakerEncoder:
    """Resemblyzer's pretrained GE2E speaker encoder (weights ship with the package)."""

    def __init__(self, device: str = "cpu"):
        import contextlib
        import io

        from resemblyzer import VoiceEncoder

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a load message
            self.encoder = VoiceEncoder(device=str(device))

    def embed(self, audio: np.ndarray, sr: int = MEASURE_SR) -> np.ndarray:
        """Unit-norm 256-d embedding of one utterance."""
        from resemblyzer import preprocess_wav

        wav = to_measure_rate(audio, sr)
        if not np.any(wav):
            return np.zeros(256, dtype=np.float32)
        trimmed = preprocess_wav(wav, MEASURE_SR)
        # VAD can trim a badly damaged decode to nothing; then embed it untrimmed.
        if len(trimmed) < MEASURE_SR // 4:
            peak = np.abs(wav).max()
            trimmed = (wav / peak * 0.5).astype(np.float32)
        return np.asarray(self.encoder.embed_utterance(trimmed), dtype=np.float32)


@functools.lru_cache(maxsize=4)
def speaker_encoder(device: str = "cpu") -> SpeakerEncoder:
    """One encoder per device per process."""
    return SpeakerEncoder(device)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0.0 or nb == 0.0:
        return float("nan")
    return float(np.dot(a, b) / (na * nb))


def speaker_similarity(enc: SpeakerEncoder, ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    return cosine(enc.embed(ref, sr), enc.embed(hyp, sr))


# -- pitch ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class F0Track:
    f0: np.ndarray
    """Hz per frame (NaN where unvoiced)."""
    voiced: np.ndarray
    """Voicing decision per frame."""


def f0_track(audio: np.ndarray, sr: int, fmin: float = 50.0, fmax: float = 600.0, hop_s: float = 0.01) -> F0Track:
    """pYIN F0 and voicing every ``hop_s`` seconds: the project's ``f0`` labeller
    (:mod:`codeclens.labels.f0`, which also marks silence unvoiced), so decoded audio is
    tracked exactly as the store's F0 labels are."""
    lab = _f0_labeller(float(fmin), float(fmax), float(hop_s))
    tr = lab.track(np.asarray(audio, dtype=np.float32), int(sr))
    return F0Track(np.asarray(tr.f0, dtype=np.float64), np.asarray(tr.voiced, dtype=bool))


@functools.lru_cache(maxsize=4)
def _f0_labeller(fmin: float, fmax: float, hop_s: float):
    from ...labels.f0 import F0Labeller
    from ...spec import parse_spec

    return F0Labeller(parse_spec(f"f0?method=pyin&fmin={fmin}&fmax={fmax}&hop={hop_s}"))


def f0_rmse_cents(ref: F0Track, hyp: F0Track) -> float:
    """RMS pitch difference in cents over frames voiced in both (NaN if none)."""
    n = min(len(ref.f0), len(hyp.f0))
    both = ref.voiced[:n] & hyp.voiced[:n]
    if not both.any():
        return float("nan")
    cents = 1200.0 * np.log2(hyp.f0[:n][both] / ref.f0[:n][both])
    return float(np.sqrt(np.mean(cents ** 2)))


def voicing_agreement(ref: F0Track, hyp: F0Track) -> float:
    """Fraction of frames with the same voiced/unvoiced decision."""
    n = min(len(ref.voiced), len(hyp.voiced))
    if n == 0:
        return float("nan")
    return float(np.mean(ref.voiced[:n] == hyp.voiced[:n]))


# -- intelligibility and spectrum ----------------------------------------------------

def stoi(ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    """Short-Time Objective Intelligibility of ``hyp`` given clean ``ref``."""
    from pystoi import stoi as _stoi

    r, h = _pair(to_measure_rate(ref, sr), to_measure_rate(hyp, sr))
    if len(r) < MEASURE_SR // 4 or not np.any(r):
        return float("nan")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pystoi warns when few frames are left after silence removal
        return float(_stoi(r, h, MEASURE_SR, extended=False))


def mel_cepstrum(audio: np.ndarray, sr: int, n_coef: int = 24, n_mels: int = 80, hop_s: float = 0.01) -> np.ndarray:
    """``[T, n_coef]`` cepstral coefficients 1..n_coef (c0, the energy, excluded) of
    the log-amplitude mel spectrum (natural log)."""
    import librosa

    wav = to_measure_rate(audio, sr)
    hop = int(round(hop_s * MEASURE_SR))
    mel = librosa.feature.melspectrogram(y=wav, sr=MEASURE_SR, n_fft=1024, hop_length=hop, n_mels=n_mels, power=1.0)
    # A floor 100 dB under the signal's own peak: a gain moves only c0 (left out), not the floor.
    logmel = np.log(np.maximum(mel, 1e-5 * max(float(mel.max()), 1e-12)))
    # Unnormalised DCT-II / (2 * n_mels): the scale of an FFT cepstrum, c_n = mean_k log|X_k| cos(...).
    c = scipy.fft.dct(logmel, type=2, norm=None, axis=0) / (2.0 * n_mels)
    return c[1 : n_coef + 1].T


def mel_cepstral_distance(ref: np.ndarray, hyp: np.ndarray, sr: int) -> float:
    """Mean frame MCD in dB (0 for identical signals)."""
    a, b = mel_cepstrum(ref, sr), mel_cepstrum(hyp, sr)
    n = min(len(a), len(b))
    if n == 0:
        return float("nan")
    d = a[:n] - b[:n]
    return float(np.mean(10.0 / np.log(10.0) * np.sqrt(2.0 * np.sum(d ** 2, axis=1))))


def rms_db(audio: np.ndarray) -> float:
    x = np.asarray(audio, dtype=np.float64)
    return float(10.0 * np.log10(np.mean(x ** 2) + 1e-12))


def loudness_change_db(ref: np.ndarray, hyp: np.ndarray) -> float:
    """RMS level of ``hyp`` minus that of ``ref``, in dB."""
    return rms_db(hyp) - rms_db(ref)


# -- content ----------------------------------------------------------------------

def word_error_rate(ref: str, hyp: str) -> float:
    """Word-level Levenshtein distance divided by the number of reference words."""
    r, h = ref.lower().split(), hyp.lower().split()
    if not r:
        return float("nan") if not h else 1.0
    prev = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        cur = [i] + [0] * len(h)
        for j, hw in enumerate(h, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (rw != hw))
        prev = cur
    return prev[-1] / len(r)


class AsrScorer:
    """Transcribes audio with a local transformers ASR checkpoint (optional measure)."""

    def __init__(self, checkpoint: str, device: str = "cpu"):
        import os

        if not os.path.exists(checkpoint):
            raise CodeclensError(
                f"ASR checkpoint '{checkpoint}' not found: give a local directory holding a transformers "
                "speech-recognition model (nothing is downloaded at run time)"
            )
        try:
            from transformers import pipeline

            self.pipe = pipeline("automatic-speech-recognition", model=checkpoint, device=str(device))
        except Exception as e:  # transformers raises many types for a bad checkpoint
            raise CodeclensError(f"cannot load ASR checkpoint '{checkpoint}': {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

    def transcribe(self, audio: np.ndarray, sr: int) -> str:
        out = self.pipe({"raw": to_measure_rate(audio, sr).astype(np.float32), "sampling_rate": MEASURE_SR})
        return str(out.get("text", "")).strip()
