"""The decode-and-measure engine shared by intervention analyses (``ablate``, ``causal``).

Everything here is about turning edited codes into numbers, and nothing about
which edits to make or how to summarise them:

- codec I/O: :func:`decode_codes`, :func:`decode_edit` (layer masks and
  mean-ablated layers), :func:`encode_audio`, :func:`utterance_codes`,
  :func:`utterance_scales` (the input level a normalising codec's decode restores),
  :func:`original_audio`;
- :class:`Measurer`: the measure columns of one decode against a
  :class:`Reference` (speaker, pitch, STOI, MCD, loudness, re-encoded phone
  accuracy, optional WER);
- :class:`Engine`: decodes and measures an :class:`~.interventions.Edited`,
  memoising by edit content, so edits that coincide (``only 1`` = ``keep 1``;
  the 2^L subsets of a Shapley sweep that repeat) are decoded once;
- :class:`UtteranceCache` and :func:`cache_key`: per-utterance results on disk,
  keyed on the store's content fingerprint (:attr:`Store.fingerprint`), the
  codec spec and whatever options the caller says the rows depend on.

A sibling analysis imports these from ``codeclens.analyses.ablate.engine``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from ...audio import AudioError, load_audio
from ...errors import CodeclensError
from ...util.atomic import atomic_path, write_json
from ...util.provenance import config_hash
from . import measures as ms
from .interventions import Edited
from .phoneprobe import PhoneProbe


# -- codec I/O ------------------------------------------------------------------------

@torch.inference_mode()
def decode_codes(codec, codes_lt: np.ndarray, layers: Sequence[int] | None = None,
                 scales: np.ndarray | None = None) -> np.ndarray:
    """``[L, T]`` codes -> mono float32 audio, through the codec's own decode; ``scales``
    (:func:`utterance_scales`) restores the input level of a codec that normalises it."""
    c = torch.from_numpy(np.ascontiguousarray(codes_lt, dtype=np.int64))[None].to(codec.device)
    layers = None if layers is None else list(layers)
    if scales is None:
        return codec.decode(c, layers)[0].detach().float().cpu().numpy()
    s = torch.from_numpy(np.array(scales, np.float32))[None].to(codec.device)
    return codec.decode(c, layers, scales=s)[0].detach().float().cpu().numpy()


_UNSCALED_WARNED: set[str] = set()


def utterance_scales(store, row: int, codec) -> np.ndarray | None:
    """The input scales (one per chunk) of utterance ``row`` that ``codec.decode`` multiplies
    back (EnCodec 48 kHz normalises each chunk by its RMS), from the store; None for codecs
    that need none. A store written before scales were kept has none: it decodes at unit
    scale (level-normalised per chunk), with one warning per store."""
    if not getattr(codec, "needs_scales", False):
        return None
    s = store.scales(row) if getattr(store, "has_scales", False) else None
    if s is None and str(store.path) not in _UNSCALED_WARNED:
        _UNSCALED_WARNED.add(str(store.path))
        warnings.warn(f"{store.path}: the store keeps no input scales for codec '{codec.spec}' (made by an older "
                      "codeclens): decoding at unit scale, so levels are normalised per chunk; extract it again "
                      "(extract --overwrite rebuilds it) to compare levels with the original", UserWarning, stacklevel=2)
    return s


@torch.inference_mode()
def decode_edit(codec, ed: Edited, expected: Sequence[np.ndarray] | None = None,
                scales: np.ndarray | None = None) -> np.ndarray:
    """Decode an edit. Mean-ablated layers add their expected table vector (``expected[k]``,
    ``[D]``) to every frame of the kept layers' quantized sum, through ``codec.decode_quantized``."""
    if not ed.mean_layers:
        return decode_codes(codec, ed.codes, ed.layers, scales)
    if expected is None:
        raise ValueError("mean ablation needs the layers' expected table vectors")
    c = torch.from_numpy(np.ascontiguousarray(ed.codes, dtype=np.int64))[None].to(codec.device)
    q = codec.quantized(c, list(ed.layers))
    for k in ed.mean_layers:
        q = q + torch.as_tensor(np.asarray(expected[k], np.float32), device=q.device)
    try:
        if scales is None:
            wave = codec.decode_quantized(q)
        else:
            wave = codec.decode_quantized(q, scales=torch.from_numpy(np.array(scales, np.float32))[None].to(q.device))
    except (NotImplementedError, AttributeError):
        raise CodeclensError(f"codec '{codec.spec}' cannot decode a quantized representation, so no mean ablation "
                             "(leave 'mean' out of --interventions)") from None
    return wave[0].detach().float().cpu().numpy()


@torch.inference_mode()
def encode_audio(codec, audio: np.ndarray) -> np.ndarray:
    """Mono audio at the codec's rate -> ``[T, L]`` codes."""
    w = torch.from_numpy(np.asarray(audio, dtype=np.float32))[None].to(codec.device)
    codes, n = codec.encode(w, torch.tensor([len(audio)], device=codec.device))
    return codes[0, :, : int(n[0])].T.cpu().numpy().astype(np.int64)


def utterance_codes(store, row: int, max_frames: int | None = None) -> np.ndarray:
    """``[L, T]`` codes of utterance ``row`` of the store."""
    u = store.utterances
    off, n = int(u["frame_offset"].iloc[row]), int(u["n_frames"].iloc[row])
    if max_frames is not None:
        n = min(n, max_frames)
    return np.asarray(store.codes[off : off + n], dtype=np.int64).T.copy()


def original_audio(store, row: int, sr: int, n_samples: int) -> np.ndarray | None:
    """The utterance's source audio (None when the path is missing or cannot be matched)."""
    u = store.utterances.iloc[row]
    path = str(u.get("path", "") or "")
    if not path:
        return None
    start = u.get("start") if "start" in u.index else None
    end = u.get("end") if "end" in u.index else None
    start = None if start is None or pd.isna(start) else float(start)
    end = None if end is None or pd.isna(end) else float(end)
    try:
        audio, _ = load_audio(path, sr, start, end)
    except AudioError:
        return None
    dur = float(u.get("duration", np.nan))
    # A segment whose offsets the store does not record would be compared with the wrong audio.
    if np.isfinite(dur) and abs(len(audio) / sr - dur) > 0.05:
        return None
    return audio[:n_samples]


def write_wav(path: Path, audio: np.ndarray, sr: int) -> None:
    import soundfile as sf

    with atomic_path(path, ".wav") as tmp:
        # float samples: the saved unedited decode is bit-identical to the codec's output.
        sf.write(str(tmp), np.asarray(audio, dtype=np.float32), sr, subtype="FLOAT", format="WAV")


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text))[:80] or "x"


# -- measuring ------------------------------------------------------------------------

@dataclasses.dataclass
class Reference:
    """Precomputed reference features of one decode."""

    audio: np.ndarray
    emb: np.ndarray | None = None
    f0: ms.F0Track | None = None
    transcript: str | None = None


class Measurer:
    """Holds the loaded models and computes the measure columns of one edited decode."""

    def __init__(self, measures: Sequence[str], sr: int, device: str, probe: PhoneProbe | None,
                 codec=None, tables=None, asr: ms.AsrScorer | None = None):
        self.measures = set(measures)
        self.sr = sr
        self.device = device
        self.probe = probe
        self.codec = codec
        self.tables = tables
        self.asr = asr

    @functools.cached_property
    def enc(self) -> ms.SpeakerEncoder | None:
        """Loaded on first use, so a fully cached re-run never loads it."""
        return ms.speaker_encoder(self.device) if "speaker" in self.measures else None

    def reference(self, audio: np.ndarray) -> Reference:
        r = Reference(audio)
        if self.enc is not None:
            r.emb = self.enc.embed(audio, self.sr)
        if "pitch" in self.measures:
            r.f0 = ms.f0_track(audio, self.sr)
        if self.asr is not None:
            r.transcript = self.asr.transcribe(audio, self.sr)
        return r

    def phone_acc(self, audio: np.ndarray, labels: np.ndarray | None) -> float:
        if self.probe is None or labels is None:
            return float("nan")
        return self.probe.accuracy(encode_audio(self.codec, audio), self.tables, labels)

    def similarity(self, ref: Reference, hyp: np.ndarray) -> float:
        """Speaker similarity of ``hyp`` to ``ref`` (NaN without the speaker measure)."""
        return ms.cosine(ref.emb, self.enc.embed(hyp, self.sr)) if self.enc is not None else float("nan")

    def measure(self, ref: Reference, hyp: np.ndarray, labels: np.ndarray | None, same: bool = False) -> dict[str, float]:
        """Columns for ``hyp`` against ``ref``; ``same`` marks the unedited decode itself."""
        out: dict[str, float] = {}
        m = self.measures
        if "speaker" in m:
            out["spk_sim"] = self.similarity(ref, hyp)
        if "pitch" in m:
            h = ref.f0 if same else ms.f0_track(hyp, self.sr)
            out["f0_rmse_cents"] = ms.f0_rmse_cents(ref.f0, h)
            out["voicing_agree"] = ms.voicing_agreement(ref.f0, h)
        if "stoi" in m:
            out["stoi"] = ms.stoi(ref.audio, hyp, self.sr)
        if "mcd" in m:
            out["mcd_db"] = ms.mel_cepstral_distance(ref.audio, hyp, self.sr)
        if "loudness" in m:
            out["loudness_db"] = ms.loudness_change_db(*ms._pair(ref.audio, hyp))
        if "phone" in m:
            out["phone_acc"] = self.phone_acc(hyp, labels)
        if self.asr is not None:
            out["wer"] = ms.word_error_rate(ref.transcript or "", self.asr.transcribe(hyp, self.sr))
        return out


class Engine:
    """Decodes and measures edits of one codec, each distinct edit once per utterance.

    ``begin(ref, labels)`` starts an utterance (and forgets the previous one's decodes,
    so memory stays bounded); ``run(ed)`` returns ``(audio, measures)``; ``decodes`` and
    ``hits`` count the work done and saved."""

    def __init__(self, codec, measurer: Measurer, expected: Sequence[np.ndarray] | None = None):
        self.codec = codec
        self.measurer = measurer
        self.expected = expected
        self.decodes = 0
        self.hits = 0
        self._memo: dict[tuple, tuple[np.ndarray, dict[str, float]]] = {}
        self._ref: Reference | None = None
        self._labels: np.ndarray | None = None
        self._scales: np.ndarray | None = None

    @staticmethod
    def signature(ed: Edited) -> tuple:
        return (tuple(ed.layers), tuple(ed.mean_layers), ed.codes.shape, np.ascontiguousarray(ed.codes).tobytes())

    def begin(self, codes: np.ndarray, labels: np.ndarray | None,
              scales: np.ndarray | None = None) -> tuple[np.ndarray, Reference, dict[str, float]]:
        """Decode the unedited ``[L, T]`` codes: (audio, reference, its own measures). ``scales``
        (:func:`utterance_scales`) apply to every decode of this utterance."""
        self._memo.clear()
        self._labels = labels
        self._scales = scales
        audio = decode_codes(self.codec, codes, None, scales)
        self.decodes += 1
        self._ref = self.measurer.reference(audio)
        vals = self.measurer.measure(self._ref, audio, labels, same=True)
        self._memo[self.signature(Edited(codes, tuple(range(codes.shape[0]))))] = (audio, vals)
        return audio, self._ref, dict(vals)

    def run(self, ed: Edited) -> tuple[np.ndarray, dict[str, float]]:
        if self._ref is None:
            raise RuntimeError("Engine.begin() first")
        sig = self.signature(ed)
        if sig in self._memo:
            self.hits += 1
        else:
            hyp = decode_edit(self.codec, ed, self.expected, self._scales)
            self.decodes += 1
            self._memo[sig] = (hyp, self.measurer.measure(self._ref, hyp, self._labels))
        hyp, vals = self._memo[sig]
        return hyp, dict(vals)


# -- the on-disk cache ------------------------------------------------------------------

def cache_key(store, codec_spec: str, options: dict[str, Any], **extra: Any) -> str:
    """Key of cached per-utterance rows: the store's *content* (``store.fingerprint``, so a store
    re-extracted or relabelled in place is not served stale rows), the codec spec, and the
    options the rows depend on (the caller leaves out those that do not: device, resamples...)."""
    return config_hash({"store": store.fingerprint, "codec": str(codec_spec), "options": options, **extra})


class UtteranceCache:
    """One JSON file of rows per utterance under ``folder``, valid only for ``key``."""

    def __init__(self, folder: Path, key: str):
        self.folder = Path(folder)
        self.key = key

    def path(self, row: int, uid: str) -> Path:
        return self.folder / f"{row:06d}-{slug(uid)}.json"

    def get(self, row: int, uid: str) -> list[dict[str, Any]] | None:
        f = self.path(row, uid)
        if not f.is_file():
            return None
        try:
            blob = json.loads(f.read_text())
            return blob["rows"] if blob.get("key") == self.key else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def put(self, row: int, uid: str, rows: list[dict[str, Any]]) -> None:
        write_json(self.path(row, uid), {"key": self.key, "rows": rows})
