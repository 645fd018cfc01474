"""Reading and resampling audio (soundfile + soxr; no torchaudio)."""

from __future__ import annotations

import os

import numpy as np
import soundfile as sf
import soxr

from .errors import CodeclensError

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


class AudioError(CodeclensError):
    """An audio file that cannot be read or holds no samples."""


def resample(audio: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out or audio.size == 0:
        return audio.astype(np.float32, copy=False)
    return soxr.resample(audio.astype(np.float32, copy=False), sr_in, sr_out).astype(np.float32)


def load_audio(
    path: str,
    sample_rate: int | None = None,
    start: float | None = None,
    end: float | None = None,
) -> tuple[np.ndarray, int]:
    """Mono float32 audio of ``path`` (optionally the ``start``..``end`` seconds segment),
    resampled to ``sample_rate`` when given. Raises :class:`AudioError` on unreadable or
    empty input."""
    try:
        if os.path.getsize(path) == 0:
            raise AudioError(f"{path}: empty file")
        info = sf.info(path)
        sr = info.samplerate
        first = int(round((start or 0.0) * sr))
        last = int(round(end * sr)) if end is not None else -1
        # soundfile counts a negative start from the file's end: a silently wrong segment.
        if first < 0:
            raise AudioError(f"{path}: segment starts before 0 ({start} s)")
        if first >= info.frames:
            raise AudioError(f"{path}: segment starts at {start} s, past the end ({info.frames / sr:.3f} s)")
        if end is not None and last <= first:
            raise AudioError(f"{path}: empty segment {start}..{end} s")
        data, sr = sf.read(path, start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True)
    except AudioError:
        raise
    except Exception as e:  # soundfile raises several types for bad files
        raise AudioError(f"{path}: unreadable audio ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    audio = data.mean(axis=1)
    if audio.size == 0:
        raise AudioError(f"{path}: no audio samples")
    if not np.all(np.isfinite(audio)):
        raise AudioError(f"{path}: audio holds NaN or infinite samples")
    if sample_rate is not None:
        audio = resample(audio, sr, sample_rate)
        sr = sample_rate
    return audio, sr
