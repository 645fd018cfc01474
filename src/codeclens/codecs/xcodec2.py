"""``xcodec2``: X-codec2 via transformers (16 kHz in and out, 50 Hz, one FSQ codebook of 65,536 codes).

X-codec2 concatenates a Wav2Vec2-BERT encoding of log-mel features (the semantic half)
with a DAC-style convolutional encoding of the waveform (the acoustic half), mixes
them with a linear layer (``fc_encoder``) and quantizes the result with finite scalar
quantization (FSQ): a linear ``project_in`` to 8 dimensions, each bounded and rounded
to one of 4 levels, and a linear ``project_out`` back to the 2048-d space the Vocos
decoder reads. A code is the mixed-radix number of its 8 level indices (4^8 = 65,536).

Two views of the same codes (spec option ``fsq_split``):

- default, one layer of 65,536 codes: the table is the *projected implicit codebook*,
  ``project_out(grid point of code c)`` for every c, so a code's row is exactly what the
  decoder receives (``quantizer.from_codes``);
- ``fsq_split=1``, one layer per FSQ dimension (8 layers of 4 codes): layer d's row for
  level v is ``W[:, d] * value(v) + b / 8`` (``W``, ``b``: ``project_out``'s weight and
  bias; ``value(v) = (v - 2) / 2``). ``project_out`` is affine, so the 8 rows sum to the
  undivided code's vector exactly. A dropped dimension contributes neither its column
  nor its share of the bias; with every dimension kept the decode is the model's own.

Input: the model's own feature pipeline (``Xcodec2FeatureExtractor``) re-implemented in
torch, since it calls torchaudio: one zero sample is appended and the waveform padded
to a whole number of hops, so N samples give exactly ``ceil((N + 1) / 320)`` frames
(``floor(N / 320) + 1``); Kaldi log-mel filterbanks (80 bins, 25 ms / 10 ms, povey
window) of the padded input with hop/2 more zeros each side, normalised per bin over
the utterance and stacked in pairs. Default checkpoint: ``HKUSTAudio/xcodec2-hf``.

:class:`XCodec2` is also the base of NeuCodec (:mod:`.neucodec`), which differs in its
feature framing, its frame count and its 24 kHz decoder.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import CodeclensError
from ..spec import Spec
from . import CODECS
from ._hf import (
    TorchCodec, calibration_batch, calibration_option, check_size, hf_class, load_hf_config, load_hf_model, seeded,
    variance_preserving_init, want_random,
)
from .base import CodecAdapter, layer_mask

#: Kaldi filterbank settings of the model's feature extractor (SeamlessM4T's, for Wav2Vec2-BERT).
N_MELS, FRAME_LENGTH, FRAME_SHIFT, LOW_FREQ, PREEMPHASIS, MEL_STACK = 80, 400, 160, 20.0, 0.97, 2
#: Floor of Kaldi's log (float32 machine epsilon) and the per-bin variance floor of the normalisation.
LOG_FLOOR, VAR_FLOOR = torch.finfo(torch.float32).eps, 1e-7


def tiny_semantic_config() -> dict:
    return dict(model_type="wav2vec2-bert", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=32, conv_depthwise_kernel_size=5, output_hidden_size=16)


#: ``size=tiny`` (tests): the release's strides, FSQ levels and feature pipeline at small widths
#: (GroupNorm needs hidden_size a multiple of 32; quantization_dim = hidden + semantic hidden).
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            head_dim=16, encoder_hidden_size=2, quantization_dim=48)


def kaldi_fbank(wave: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Kaldi log-mel filterbank ``[frames, 80]`` of a 1-d waveform in [-1, 1], with the settings
    the X-codec2 / NeuCodec feature extractors pass to ``torchaudio.compliance.kaldi.fbank``
    (input scaled to 16-bit range, snip_edges, DC removal and pre-emphasis per frame, povey
    window, FFT size 512, power spectrum, mel bins from 20 Hz to Nyquist, no dither)."""
    x = wave.float() * 2**15
    if x.shape[0] < FRAME_LENGTH:
        return x.new_zeros(0, N_MELS)
    frames = x.unfold(0, FRAME_LENGTH, FRAME_SHIFT)
    frames = frames - frames.mean(1, keepdim=True)
    prev = torch.cat([frames[:, :1], frames[:, :-1]], 1)  # Kaldi's pre-emphasis repeats each frame's first sample
    frames = frames - PREEMPHASIS * prev
    window = torch.hann_window(FRAME_LENGTH, periodic=False, device=x.device).pow(0.85)
    n_fft = 1 << (FRAME_LENGTH - 1).bit_length()
    power = torch.fft.rfft(frames * window, n=n_fft).abs().pow(2)
    mel = power @ mel_banks(n_fft, sample_rate).to(x.device).T
    return mel.clamp(min=LOG_FLOOR).log()


def mel_banks(n_fft: int, sample_rate: int) -> torch.Tensor:
    """Kaldi's triangular mel filters ``[80, n_fft // 2 + 1]`` (the Nyquist bin gets no weight)."""
    def mel(f):
        return 1127.0 * torch.log1p(torch.as_tensor(f, dtype=torch.float32) / 700.0)

    lo, hi = float(mel(LOW_FREQ)), float(mel(sample_rate / 2))
    delta = (hi - lo) / (N_MELS + 1)
    b = torch.arange(N_MELS, dtype=torch.float32)[:, None]
    left, centre, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
    m = mel(sample_rate / n_fft * torch.arange(n_fft // 2, dtype=torch.float32))[None]
    banks = torch.clamp(torch.minimum((m - left) / (centre - left), (right - m) / (right - centre)), min=0.0)
    return F.pad(banks, (0, 1))


def normalise_and_stack(fbank: torch.Tensor) -> torch.Tensor:
    """Per-bin mean/variance normalisation over the utterance, then pairs of frames side by side
    (an odd last frame dropped, as the feature extractor does): ``[frames // 2, 160]``."""
    f = (fbank - fbank.mean(0)) / torch.sqrt(fbank.var(0, unbiased=True) + VAR_FLOOR)
    n = f.shape[0] - f.shape[0] % MEL_STACK
    return f[:n].reshape(n // MEL_STACK, N_MELS * MEL_STACK)


@CODECS.register("xcodec2")
class XCodec2(TorchCodec, CodecAdapter):
    options = ("size", "calibration", "fsq_split")
    kind = "xcodec2"
    config_class, model_class = "Xcodec2Config", "Xcodec2Model"
    hub = "HKUSTAudio/xcodec2-hf"
    #: Frame-centre offsets of the two halves (s), measured in tests/test_codec_xcodec2.py. The
    #: acoustic encoder's strided convolutions are centred to within a few samples. Semantic
    #: frame k stacks log-mel frames 2k and 2k+1 of the input padded by 160 samples each side:
    #: they span input samples [320k - 160, 320k + 400), centred 40 samples (2.5 ms) before the
    #: nominal centre 320k + 160 (the conformer and the per-utterance normalisation then mix frames).
    half_offsets = {"acoustic": -0.0025, "semantic": -0.0025}
    #: Zeros each side of the padded waveform before the filterbank (hop / 2 for X-codec2).
    mel_pad_hops = 0.5

    def __init__(self, model, device: torch.device, split: bool = False):
        cfg = model.config
        self.model = model.to(device).eval()
        self.device = device
        self.split = split
        self.sample_rate = int(self._input_rate(cfg))
        self.hop = int(math.prod(int(r) for r in cfg.downsampling_ratios))
        self.frame_rate = self.sample_rate / self.hop
        self.levels = [int(v) for v in cfg.quantization_levels]
        self.n_layers = len(self.levels) if split else 1
        self.codebook_sizes = list(self.levels) if split else [math.prod(self.levels)]
        self.frame_offset = 0.5 * (self.half_offsets["acoustic"] + self.half_offsets["semantic"])
        self._check_fsq(cfg)

    @staticmethod
    def _input_rate(cfg) -> int:
        return cfg.sampling_rate

    @classmethod
    def builtin_config(cls, size: str):
        Config = hf_class(cls.config_class)
        if size == "tiny":
            return Config(**TINY, semantic_model_config=tiny_semantic_config())
        return Config()

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "XCodec2":
        Config, Model = hf_class(cls.config_class), hf_class(cls.model_class)
        if spec.target:
            raise CodeclensError(f"{cls.kind}: takes no target (got '{spec.target}'); use {cls.kind}?checkpoint=...")
        size = check_size(spec)
        split = bool(spec.get("fsq_split", False, bool))
        ckpt = spec.get("checkpoint")
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            config = load_hf_config(Config, ckpt, cls.kind) if ckpt else cls.builtin_config(size)
            with seeded(seed):
                model = Model(config)
                variance_preserving_init(model.acoustic_encoder, model.semantic_adapter, model.fc_encoder)
            adapter = cls(model, device, split)
            adapter.calibration_seconds = calibration_option(spec)
            adapter.calibrate(seed)
            return adapter
        return cls(load_hf_model(Model, Config, ckpt or cls.hub, cls.kind), device, split)

    def _check_fsq(self, cfg) -> None:
        """The FSQ buffers are derived, never loaded: make sure they are the config's grid."""
        fsq = self.model.quantizer.quantizer
        want = math.prod(self.levels)
        if fsq.codebook.shape != (want, len(self.levels)) or int(cfg.quantization_dim) != self.model.quantizer.project_out.out_features:
            raise CodeclensError(f"{self.kind}: FSQ grid {tuple(fsq.codebook.shape)} does not match levels {self.levels}")

    # -- the model's input pipeline -------------------------------------------------------

    def frames_for(self, n_samples: int) -> int:
        """One zero sample is appended before padding to whole hops (the feature extractor's rule)."""
        return math.ceil((n_samples + 1) / self.hop)

    def padded(self, x: torch.Tensor) -> torch.Tensor:
        """``x [1, N]`` -> ``[1, P]``: one zero appended, then zeros to a whole number of hops."""
        x = F.pad(x, (0, 1))
        return F.pad(x, (0, (-x.shape[-1]) % self.hop))

    def mel_frames(self, x: torch.Tensor) -> torch.Tensor:
        """Stacked log-mel frames ``[T_sem, 160]`` of ``x [1, N]`` before the per-utterance
        normalisation (what fixes the semantic half's timing)."""
        p = self.padded(x)[0]
        pad = int(self.mel_pad_hops * self.hop)
        fb = kaldi_fbank(F.pad(p, (pad, pad)), self.sample_rate)
        n = fb.shape[0] - fb.shape[0] % MEL_STACK
        return fb[:n].reshape(n // MEL_STACK, N_MELS * MEL_STACK)

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_values [1, 1, P], input_features [1, T_sem, 160])`` of ``x [1, N]``, as the
        model's feature extractor computes them for one utterance."""
        p = self.padded(x)
        pad = int(self.mel_pad_hops * self.hop)
        fb = kaldi_fbank(F.pad(p[0], (pad, pad)), self.sample_rate)
        if fb.shape[0] < MEL_STACK:  # one stacked frame (two filterbank frames, enough for the per-bin variance)
            raise CodeclensError(f"{self.kind}: utterance of {x.shape[-1]} samples is too short to encode")
        return p[:, None], normalise_and_stack(fb)[None]

    def halves(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(acoustic [1, D_a, T], semantic [1, D_s, T])`` encoder outputs of ``x [1, N]``, as
        ``encode`` computes them before concatenating."""
        m = self.model
        values, feats = self.features(x)
        sem = m.semantic_adapter(m.semantic_encoder(feats).last_hidden_state.transpose(1, 2))
        return m.acoustic_encoder(values), sem

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        """The quantizer's input ``[1, T, D]`` (``fc_encoder`` of the concatenated halves)."""
        ac, sem = self.halves(x)
        return self.model.fc_encoder(torch.cat([sem, ac], dim=1).transpose(1, 2))

    def _encode_one(self, x):
        values, feats = self.features(x)
        idx = self.model.encode(values, input_features=feats).audio_codes[0]  # [1, T]
        return self.split_codes(idx[None])[0] if self.split else idx

    def _latent_one(self, x):
        return self._embed(x)[0]

    # -- codes, tables, quantized ---------------------------------------------------------

    def _basis(self) -> torch.Tensor:
        b = [1]
        for v in self.levels[:-1]:
            b.append(b[-1] * v)
        return torch.tensor(b, device=self.device)

    def split_codes(self, idx: torch.Tensor) -> torch.Tensor:
        """``[B, 1, T]`` FSQ codes -> ``[B, n_dims, T]`` level indices (mixed radix, first dimension fastest)."""
        lv = torch.tensor(self.levels, device=idx.device)
        return (idx.long() // self._basis().to(idx.device)[None, :, None]) % lv[None, :, None]

    def join_codes(self, levels: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split_codes`."""
        return (levels.long() * self._basis().to(levels.device)[None, :, None]).sum(1, keepdim=True)

    def full_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """Adapter codes ``[B, L, T]`` -> the model's ``[B, 1, T]`` FSQ codes."""
        return self.join_codes(codes) if self.split else codes

    def _compute_tables(self):
        q = self.model.quantizer
        if not self.split:
            return [q.project_out(q.quantizer.codebook.to(q.project_out.weight.dtype))]
        w, b = q.project_out.weight, q.project_out.bias
        n = len(self.levels)
        tabs = []
        for d, lv in enumerate(self.levels):
            half = lv // 2
            values = (torch.arange(lv, device=w.device, dtype=w.dtype) - half) / half
            tabs.append(values[:, None] * w[:, d][None] + b[None] / n)
        return tabs

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        q = self.model.quantizer
        keep = layer_mask(self.n_layers, layers)
        if len(keep) == self.n_layers:
            return q.from_codes(self.full_codes(codes).transpose(1, 2))
        if not self.split:
            b, _, t = codes.shape
            return torch.zeros(b, t, self.dim, device=self.device)
        # Kept dimensions' grid values through project_out; dropped ones and their bias shares are left out.
        values = q.quantizer._indices_to_codes(self.join_codes(codes)[:, 0])  # [B, T, n_dims]
        mask = torch.zeros(len(self.levels), device=self.device)
        mask[keep] = 1.0
        dropped = 1.0 - len(keep) / len(self.levels)
        return q.project_out(values.to(q.project_out.weight.dtype) * mask) - dropped * q.project_out.bias

    def _decode_quantized(self, q):
        return self.model.acoustic_decoder(q).squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """transformers' own ``decode(audio_codes=...)`` of the codes."""
        with torch.no_grad():
            return self.model.decode(audio_codes=self.full_codes(codes.to(self.device))).audio_values.squeeze(1)

    def describe(self):
        d = {**super().describe(), "frame_offset_halves_s": dict(self.half_offsets),
             "fsq_levels": list(self.levels), "fsq_split": self.split}
        return d

    # -- random_init ----------------------------------------------------------------------

    @torch.no_grad()
    def calibrate(self, seed: int) -> None:
        """random_init on the calibration signal, in three steps:

        1. the acoustic half gets the semantic half's RMS (scaling the acoustic encoder's
           output convolution), so both branches carry signal into the mixed latent;
        2. FSQ: ``project_in`` reads the latent's 8 principal directions, each scaled to unit
           spread (so every dimension uses its levels), and ``project_out`` is the least-squares
           read-out of the latent from the grid values, so the quantized output is the best the
           8-d grid can give (at transformers' init both are unrelated random maps);
        3. the decoder's output level: the ISTFT head's log-magnitude bias is shifted so decodes
           have the input's RMS.
        """
        m = self.model
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        ac, sem = self.halves(x)
        scale = _rms(sem) / _rms(ac)
        m.acoustic_encoder.conv2.weight.mul_(scale)
        if m.acoustic_encoder.conv2.bias is not None:
            m.acoustic_encoder.conv2.bias.mul_(scale)
        # conv2 is the acoustic encoder's last (linear) layer: its new output is scale * ac, so
        # the full-width encoder need not run again (the slow part at release size).
        z = m.fc_encoder(torch.cat([sem, scale * ac], dim=1).transpose(1, 2))
        self._calibrate_fsq(z[0])
        self._table_cache = None
        q = m.quantizer(z)[0]  # the model's quantizer forward: project_out of the chosen grid points
        head = m.acoustic_decoder.head
        n_mag = head.linear.out_features // 2
        for _ in range(3):  # the magnitude is clamped at 100, so a single shift can fall short
            head.linear.bias[:n_mag] += math.log(_rms(x) / _rms(self._decode_quantized(q)))

    def _calibrate_fsq(self, z: torch.Tensor) -> None:
        q = self.model.quantizer
        mean = z.mean(0)
        _, _, v = torch.linalg.svd(z - mean, full_matrices=False)
        w = v[: len(self.levels)]  # [n_dims, D] principal directions
        proj = (z - mean) @ w.T
        s = 1.0 / proj.std(0).clamp(min=1e-8)
        q.project_in.weight.copy_(w * s[:, None])
        q.project_in.bias.copy_(-(mean @ w.T) * s)
        values = q.quantizer(q.quantizer.bound(q.project_in(z)))[0]  # grid values [N, n_dims]
        a = torch.cat([values, torch.ones(len(values), 1, device=z.device)], 1)
        sol = torch.linalg.lstsq(a.double().cpu(), z.double().cpu()).solution.to(z)  # [n_dims + 1, D]
        q.project_out.weight.copy_(sol[:-1].T)
        q.project_out.bias.copy_(sol[-1])


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt().clamp(min=1e-12))
