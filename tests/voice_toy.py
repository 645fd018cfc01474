"""A codec with a planted speaker layer, for the attribute model's voice-conversion known answer.

``VoiceToyCodec``: 3 layers at 50 Hz, 16 kHz. Its decoder is a source-filter synthesizer:
layer 1 is the vowel (code 0 = silence, codes 1-7 = formant patterns), layer 2 the pitch
(F0 = 100 + 15 * code Hz, independent of the speaker) and layer 3 the speaker, who scales
every formant (a vocal-tract length) and sets the spectral tilt. So the speaker lives in
layer 3 only, and a model that regenerates layer 3 from a target's identity tokens, while
keeping layers 1-2 from the source, converts the voice. ``encode`` is analysis by synthesis
(each frame's spectrum against every code triple's), so decodes re-encode for the phone probe.
"""

from __future__ import annotations

import numpy as np
import torch

from codeclens.codecs.base import CodecAdapter, layer_mask

VOWELS = np.array([[0, 0, 0], [730, 1090, 2440], [270, 2290, 3010], [300, 870, 2240], [530, 1840, 2480],
                   [660, 1720, 2410], [570, 840, 2410], [440, 1020, 2240]], float)
SPEAKERS = [(0.78, 0.9), (1.0, 1.6), (1.25, 0.5), (1.45, 1.2)]
"""(formant scale, spectral tilt) of speaker codes 0-3."""


def _spectrum(frames: np.ndarray) -> np.ndarray:
    """Unit-norm log-magnitude spectra of ``[n, HOP]`` frames."""
    m = np.log1p(1e3 * np.abs(np.fft.rfft(frames * np.hanning(frames.shape[1]), n=2048, axis=1)))
    m -= m.mean(1, keepdims=True)
    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-9)


def toy_tables() -> list[np.ndarray]:
    """One-hot code vectors, each layer in its own block, so sums of layers (``cumulative:k``) keep
    every code apart and a linear probe can read the vowel."""
    sizes = VoiceToyCodec.codebook_sizes
    D = sum(sizes)
    out, at = [], 0
    for k in sizes:
        t = np.zeros((k, D), np.float32)
        t[np.arange(k), at + np.arange(k)] = 1.0
        out.append(t)
        at += k
    return out


def f0_of(code) -> np.ndarray:
    return 100.0 + 15.0 * np.asarray(code, float)


class VoiceToyCodec(CodecAdapter):
    sample_rate = 16000
    frame_rate = 50.0
    n_layers = 3
    codebook_sizes = [8, 8, 4]
    HOP = 320

    @classmethod
    def from_spec(cls, spec, device):
        self = cls()
        self.device = device
        self._tables = [torch.from_numpy(t) for t in toy_tables()]
        return self

    def tables(self):
        return self._tables

    def encode(self, waves, lengths):
        """Analysis by synthesis: each frame's magnitude spectrum against the steady-state spectrum
        of every (vowel, pitch, speaker); quiet frames are silence (all codes 0)."""
        x = waves.reshape(waves.shape[0], -1).cpu().numpy()
        n = (lengths + self.HOP - 1) // self.HOP
        T = int(n.max())
        keys, tmpl = self._templates()
        out = np.zeros((x.shape[0], 3, T), np.int64)
        for b in range(x.shape[0]):
            fr = np.pad(x[b], (0, max(0, T * self.HOP - x.shape[1])))[: T * self.HOP].reshape(T, self.HOP)
            mag = _spectrum(fr)
            loud = np.sqrt((fr ** 2).mean(1)) > 1e-4
            best = keys[np.argmax(mag @ tmpl.T, 1)]
            out[b][:, loud] = best[loud].T
        return torch.from_numpy(out), n

    def _templates(self):
        if not hasattr(self, "_tm"):
            keys = np.array([(v, p, s) for v in range(1, 8) for p in range(8) for s in range(4)])
            c = np.repeat(keys[:, :, None], 3, 2)  # three steady frames each; the middle one is the template
            audio = self.decode(torch.from_numpy(c)).numpy().reshape(len(keys), 3, self.HOP)[:, 1]
            self._tm = keys, _spectrum(audio)
        return self._tm

    def quantized(self, codes, layers=None):
        return self.lookup(codes, layers)

    def decode(self, codes, layers=None):
        present = set(layer_mask(3, layers))
        c = codes.cpu().numpy()
        B, _, T = c.shape
        t = np.arange(self.HOP) / self.sample_rate
        out = np.zeros((B, T * self.HOP), np.float32)
        for b in range(B):
            phase = 0.0
            for i in range(T):
                v = int(c[b, 0, i]) if 0 in present else 1
                f0 = float(f0_of(c[b, 1, i])) if 1 in present else 150.0
                scale, tilt = SPEAKERS[int(c[b, 2, i])] if 2 in present else (1.0, 1.0)
                if v:
                    h = np.arange(1, int(7000 // f0) + 1)
                    f = h * f0
                    env = sum(np.exp(-0.5 * ((f - F * scale) / (60.0 + 0.08 * F)) ** 2) for F in VOWELS[v])
                    amp = (0.02 + env) * (f / 100.0) ** -tilt
                    seg = (amp[:, None] * np.sin(h[:, None] * (phase + 2 * np.pi * f0 * t)[None])).sum(0)
                    out[b, i * self.HOP:(i + 1) * self.HOP] = 0.1 * seg / max(amp.sum(), 1e-9) * 3
                phase += 2 * np.pi * f0 * self.HOP / self.sample_rate
        return torch.from_numpy(out)


def voice_store(path, speakers=(0, 1, 2), per_speaker=6, n_test=2, n_frames=60, seed=0):
    """A store of :class:`VoiceToyCodec` tokens with exact labels: phones = vowel codes, F0 from
    the pitch codes (drawn independently of the speaker), loudness from voicing; no source
    audio, so speaker embeddings come from the codec's decode. ``n_test`` utterances of each
    speaker are the ``split_utt`` test set."""
    import pandas as pd

    from codeclens.store.arrays import write_store

    rng = np.random.default_rng(seed)
    codes, rows = [], []
    for s in speakers:
        for k in range(per_speaker):
            seg = rng.integers(3, 8, size=n_frames)
            v = np.repeat(rng.integers(0, 8, size=n_frames), seg)[:n_frames]
            p = np.repeat(rng.integers(0, 8, size=n_frames), seg[::-1])[:n_frames]
            v[:3] = v[-3:] = 0
            codes.append(np.stack([v, p, np.full(n_frames, s)], 1))
            rows.append({"id": f"spk{s}_{k}", "speaker": f"spk{s}", "n_frames": n_frames,
                         "split_utt": "test" if k >= per_speaker - n_test else "train"})
    c = np.concatenate(codes)
    u = pd.DataFrame(rows)
    u["split_spk"] = "train"
    voiced = c[:, 0] > 0
    fr = pd.DataFrame({"phone": [f"v{x}" for x in c[:, 0]], "f0_hz": np.where(voiced, f0_of(c[:, 1]), np.nan),
                       "voiced": voiced, "loudness": np.where(voiced, -20.0, -80.0)})
    return write_store(path, c, toy_tables(), u, fr, codec_spec="python:voice_toy:VoiceToyCodec", name="voice-toy",
                       sample_rate=16000, seed=seed)
