"""``melrvq``: the built-in reference codec.

Log-mel frames (16 kHz, 80 bins, 50 Hz) are residual-quantized by k-means
codebooks fitted on a corpus in seconds, and decoded by inverse mel +
Griffin-Lim. Offline default codec, and a purely spectral baseline in studies:
whatever a probe finds in melrvq's layers is what a spectrogram quantizer
gets for free. Frame ``t`` is the window centred on ``(t + 0.5) * hop``, the
time the store gives frame ``t``, so labels line up with the codes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Iterable, Sequence

import librosa
import numpy as np
import torch

from ..errors import CodeclensError
from ..spec import Spec
from ..util.atomic import atomic_path, write_json
from . import CODECS
from .base import CodecAdapter, layer_mask
from .calibration import calibration_audio, sample_rows

WEIGHTS = "melrvq.safetensors"
CONFIG = "melrvq.json"


@dataclasses.dataclass(frozen=True)
class MelRVQConfig:
    sample_rate: int = 16000
    """Audio sample rate (Hz)."""
    n_mels: int = 80
    """Mel bins."""
    hop_length: int = 320
    """Samples between frames (320 at 16 kHz = 50 Hz)."""
    n_fft: int = 1024
    """FFT size (and window length)."""
    n_layers: int = 8
    """Residual quantizer layers."""
    codebook_size: int = 256
    """Codes per layer."""
    griffin_lim_iters: int = 32
    """Griffin-Lim iterations when decoding."""

    def __post_init__(self):
        for f in ("sample_rate", "n_mels", "hop_length", "n_fft", "n_layers", "codebook_size"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1")
        if self.n_fft < self.hop_length:
            raise ValueError("n_fft must be >= hop_length (windows must cover the signal)")


def log_mel(audio: np.ndarray, cfg: MelRVQConfig) -> np.ndarray:
    """``[T, n_mels]`` log-mel frames, T = ceil(N / hop).

    Frame ``t`` is centred on sample ``t*hop + hop/2``, the centre of its span
    ``[t*hop, (t+1)*hop)``, which is where the store places frame ``t``
    (:func:`codeclens.labels.frame_times`). A centred STFT would centre it on
    ``t*hop``, half a frame (10 ms) early against every label.
    """
    hop, n_fft = cfg.hop_length, cfg.n_fft
    n_frames = -(-len(audio) // hop)
    left = n_fft // 2 - hop // 2
    # Enough zeros on the right that the last frame's window fits.
    right = n_fft + hop
    y = np.pad(audio.astype(np.float32), (left, right))
    mel = librosa.feature.melspectrogram(
        y=y, sr=cfg.sample_rate, n_fft=n_fft, hop_length=hop, n_mels=cfg.n_mels, power=2.0, center=False,
    )
    return np.log(mel[:, :n_frames].T + 1e-5).astype(np.float32)


def kmeans(x: torch.Tensor, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Lloyd's k-means with k-means++-style seeding; empty clusters are re-seeded."""
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    first = torch.randint(0, n, (1,), generator=g)
    centers = [x[first]]
    d2 = torch.cdist(x, centers[0]).squeeze(1) ** 2
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        nxt = torch.multinomial(probs.cpu(), 1, generator=g).to(x.device)
        centers.append(x[nxt])
        d2 = torch.minimum(d2, (torch.cdist(x, x[nxt]).squeeze(1)) ** 2)
    c = torch.cat(centers)
    for _ in range(iters):
        assign = torch.cdist(x, c).argmin(1)
        sums = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k).to(x.dtype)
        empty = counts == 0
        c = torch.where(empty[:, None], c, sums / counts.clamp(min=1)[:, None])
        if empty.any():
            c[empty] = x[torch.randint(0, n, (int(empty.sum()),), generator=g).to(x.device)]
    return c


def fit_codebooks(frames: torch.Tensor, n_layers: int, k: int, iters: int = 25, seed: int = 0) -> torch.Tensor:
    """Residual k-means: layer l clusters what layers < l left over. -> ``[L, K, D]``."""
    resid = frames.clone()
    books = []
    for l in range(n_layers):
        c = kmeans(resid, min(k, resid.shape[0]), iters, seed + l)
        if c.shape[0] < k:
            c = torch.cat([c, sample_rows(resid, k - c.shape[0], seed + l)])
        resid = resid - c[torch.cdist(resid, c).argmin(1)]
        books.append(c)
    return torch.stack(books)


@CODECS.register("melrvq")
class MelRVQ(CodecAdapter):
    options = ("layers", "codebook_size")

    def __init__(self, cfg: MelRVQConfig, codebooks: torch.Tensor, device: torch.device):
        self.cfg = cfg
        self.device = device
        self.codebooks = codebooks.float().to(device)  # [L, K, D]
        self.sample_rate = cfg.sample_rate
        self.frame_rate = cfg.sample_rate / cfg.hop_length
        self.n_layers = int(codebooks.shape[0])
        self.codebook_sizes = [int(codebooks.shape[1])] * self.n_layers

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "MelRVQ":
        ckpt = spec.get("checkpoint")
        if ckpt:
            return cls.load(ckpt, device)
        if not spec.get("random_init", False, bool):
            raise CodeclensError(
                "melrvq needs checkpoint=DIR (fit one with 'codeclens melrvq fit') or random_init=1"
            )
        try:
            cfg = MelRVQConfig(
                n_layers=spec.get("layers", 8, int), codebook_size=spec.get("codebook_size", 256, int)
            )
        except ValueError as e:
            raise CodeclensError(f"melrvq: {e}") from None
        frames = torch.from_numpy(log_mel(calibration_audio(cfg.sample_rate, 8.0, spec.get("seed", 0, int)), cfg))
        # Random control: every layer's codebook is a sample of residual frames, no k-means.
        books, resid = [], frames
        for l in range(cfg.n_layers):
            c = sample_rows(resid, cfg.codebook_size, l)
            resid = resid - c[torch.cdist(resid, c).argmin(1)]
            books.append(c)
        return cls(cfg, torch.stack(books), device)

    @classmethod
    def load(cls, path: str | Path, device: torch.device | str = "cpu") -> "MelRVQ":
        from safetensors.torch import load_file

        path = Path(path)
        if not (path / CONFIG).is_file() or not (path / WEIGHTS).is_file():
            raise CodeclensError(f"melrvq checkpoint not found in '{path}' (expected {CONFIG} and {WEIGHTS})")
        try:
            raw = json.loads((path / CONFIG).read_text())
            cfg = MelRVQConfig(**{k: v for k, v in raw.items() if k in {f.name for f in dataclasses.fields(MelRVQConfig)}})
            books = load_file(str(path / WEIGHTS))["codebooks"]
        except Exception as e:  # noqa: BLE001 - bad JSON, bad values, a damaged weights file
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise CodeclensError(f"melrvq checkpoint in '{path}' is damaged: {msg}") from None
        if books.ndim != 3 or books.shape[2] != cfg.n_mels:
            raise CodeclensError(f"melrvq checkpoint in '{path}': codebooks {tuple(books.shape)} do not match n_mels={cfg.n_mels}")
        return cls(cfg, books, torch.device(device))

    def save(self, path: str | Path, extra: dict | None = None) -> None:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with atomic_path(path / WEIGHTS, ".safetensors") as tmp:
            save_file({"codebooks": self.codebooks.cpu().contiguous()}, str(tmp))
        write_json(path / CONFIG, {**dataclasses.asdict(self.cfg), **(extra or {})})

    def tables(self) -> list[torch.Tensor]:
        return list(self.codebooks.unbind(0))

    def _frames(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Per item, so padding never reaches the STFT of the last frames.
        mels = [log_mel(w[: int(n)].cpu().numpy(), self.cfg) for w, n in zip(waves, lengths)]
        t = max(m.shape[0] for m in mels)
        x = torch.zeros(len(mels), t, self.cfg.n_mels, device=self.device)
        for i, m in enumerate(mels):
            x[i, : m.shape[0]] = torch.from_numpy(m).to(self.device)
        return x, torch.tensor([m.shape[0] for m in mels], device=self.device)

    def latent(self, waves, lengths):
        return self._frames(waves, lengths)

    def encode(self, waves, lengths):
        x, n = self._frames(waves, lengths)
        b, t, d = x.shape
        resid = x.reshape(b * t, d)
        codes = []
        for l in range(self.n_layers):
            c = torch.cdist(resid, self.codebooks[l]).argmin(1)
            resid = resid - self.codebooks[l][c]
            codes.append(c.reshape(b, t))
        return torch.stack(codes, 1), n

    def quantized(self, codes, layers=None):
        out = torch.zeros(codes.shape[0], codes.shape[2], self.cfg.n_mels, device=codes.device)
        for l in layer_mask(self.n_layers, layers):
            out += self.codebooks[l].to(codes.device)[codes[:, l]]
        return out

    def decode(self, codes, layers=None):
        return self.decode_quantized(self.quantized(codes, layers))

    def decode_quantized(self, q):
        logmel = q.cpu().numpy()
        waves = []
        for m in logmel:
            mel = np.maximum(np.exp(m.T) - 1e-5, 0.0)
            # Griffin-Lim (centred) puts frame j at sample j*hop; frame t belongs at
            # t*hop + hop/2 (see log_mel). Repeat the edge frames, invert T+2 frames
            # ((T+1)*hop samples, frame t at (t+1)*hop) and cut from hop/2 on.
            mel = np.concatenate([mel[:, :1], mel, mel[:, -1:]], axis=1)
            stft_mag = librosa.feature.inverse.mel_to_stft(
                mel, sr=self.cfg.sample_rate, n_fft=self.cfg.n_fft, power=2.0
            )
            # Fixed phase seed: the same codes always decode to the same waveform.
            hop, t = self.cfg.hop_length, m.shape[0]
            y = librosa.griffinlim(
                stft_mag, n_iter=self.cfg.griffin_lim_iters, hop_length=hop,
                win_length=self.cfg.n_fft, center=True, length=(t + 1) * hop, random_state=0,
            )
            y = y[hop // 2 : hop // 2 + t * hop]
            waves.append(torch.from_numpy(y.astype(np.float32)))
        return torch.stack(waves).to(q.device)


def fit_melrvq(
    utterances: Iterable, out: str | Path, cfg: MelRVQConfig = MelRVQConfig(), max_frames: int = 200_000,
    iters: int = 25, seed: int = 0, device: str | torch.device = "cpu", progress: bool = True,
) -> MelRVQ:
    """Fit melrvq codebooks on a corpus' utterances and save them to ``out``."""
    from ..audio import AudioError

    frames, n, skipped = [], 0, 0
    utts = list(utterances)
    it = utts
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(utts, desc="melrvq: log-mel", unit="utt")
    for u in it:
        try:
            audio, _ = u.load(cfg.sample_rate)
        except AudioError:
            skipped += 1
            continue
        m = log_mel(audio, cfg)
        frames.append(m)
        n += len(m)
        if n >= max_frames:
            break
    if not frames:
        raise CodeclensError("melrvq fit: no readable audio in the corpus")
    x = torch.from_numpy(np.concatenate(frames)[:max_frames]).to(device)
    if x.shape[0] < cfg.codebook_size:
        raise CodeclensError(
            f"melrvq fit: only {x.shape[0]} frames for {cfg.codebook_size} codes per layer; "
            "use a larger corpus or a smaller --codebook-size"
        )
    books = fit_codebooks(x, cfg.n_layers, cfg.codebook_size, iters, seed)
    model = MelRVQ(cfg, books.cpu(), torch.device("cpu"))
    model.save(out, {"fitted_frames": int(x.shape[0]), "skipped_files": skipped, "seed": seed})
    return model
