"""``bigcodec``: BigCodec (Xin et al. 2024): 16 kHz speech, one VQ layer of 8192 codes
at 80 Hz (hop 200), 1.04 kbps.

The network is :mod:`._bigcodec_net`, written against the module layout of the authors'
release (github.com/Aria-K-Alethia/BigCodec) so its checkpoint loads as it is. The
``bigcodec`` PyPI package (0.0.3) is not used at run time: it is a third-party
repackaging that imports torchaudio at module level (which does not load beside this
torch); tests cross-check this network against its ``bigcodec.modules`` with the same
weights (identical codes and decodes).

Checkpoints (``checkpoint=``) are the release's layout: one torch file (loaded with
``weights_only=True``) holding two nested state dicts, ``"CodecEnc"`` (encoder) and
``"generator"`` (decoder, which owns the quantizer), as ``bigcodec.pt`` from
``Alethia/BigCodec``; either the file itself or a directory holding one such file. A
``config.json`` beside it (written by ``save`` for non-release sizes) gives the
architecture, else the release's is assumed. Without ``checkpoint=`` the release is
read from the Hugging Face cache (downloaded when online).

The codebook is factorized: a code indexes an 8-d codebook (looked up by cosine
similarity) whose row is pushed through the layer's linear ``out_proj`` (bias included)
into the 1024-d space the decoder reads, so the table is ``out_proj(codebook)``.

Input is zero-padded to a whole number of 200-sample hops, as the release's
``inference.py`` pads it, so an utterance of N samples has exactly ``ceil(N / 200)``
frames. (The script pads ``200 - N % 200`` samples, i.e. a whole extra hop when N is
already a multiple of 200, giving one more all-silence frame; the adapter does not add
that frame.)
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import CodeclensError
from ..spec import Spec
from ..util.atomic import atomic_dir
from . import CODECS
from ._bigcodec_net import BigCodecConfig, BigCodecModel, ResidualUnit
from ._hf import (
    TorchCodec, calibration_batch, calibration_option, check_size, fan_in, init_residual_codebooks, load_state_file,
    pad_to_hop, seeded, want_random,
)
from .base import CodecAdapter

WEIGHTS = "bigcodec.pt"
CONFIG = "config.json"
HUB = ("Alethia/BigCodec", "bigcodec.pt")
#: The release's architecture (config/model/default.yaml).
FULL = BigCodecConfig()
#: Same strides, rate, codebook; few channels.
TINY = BigCodecConfig(ngf=4, latent_dim=32, decoder_channels=64, rnn_num_layers=1)
#: Target RMS of a random control's latent and of its decoder's pre-tanh output.
LATENT_RMS, OUTPUT_RMS = 1.0, 0.3


@CODECS.register("bigcodec")
class BigCodec(TorchCodec, CodecAdapter):
    options = ("size", "config", "calibration")

    def __init__(self, model: BigCodecModel, device: torch.device):
        self.model = model.to(device).eval()
        self.device = device
        cfg = model.config
        self.sample_rate = int(cfg.sample_rate)
        self.hop = cfg.hop
        self.frame_rate = self.sample_rate / self.hop
        self.n_layers = len(model.decoder.quantizer.layers)
        self.codebook_sizes = [int(cfg.codebook_size)] * self.n_layers

    @classmethod
    def from_spec(cls, spec: Spec, device: torch.device) -> "BigCodec":
        if spec.target:
            raise CodeclensError(f"bigcodec takes no target (got '{spec}'); use checkpoint=...")
        size = check_size(spec)
        ckpt, config = spec.get("checkpoint"), spec.get("config")
        if want_random(spec):
            seed = spec.get("seed", 0, int)
            cfg = _architecture(ckpt, config) if (ckpt or config) else (TINY if size == "tiny" else FULL)
            with seeded(seed):
                model = BigCodecModel(cfg)
                _variance_preserving_init(model)
            adapter = cls(model, device)
            adapter.calibration_seconds = calibration_option(spec)
            with seeded(seed):
                adapter.init_codebooks(seed)
            return adapter
        weights = _find_weights(Path(ckpt).expanduser()) if ckpt else _from_hub()
        cfg = _architecture(str(weights), config)
        model = BigCodecModel(cfg)
        _load_release_state(model, weights)
        return cls(model, device)

    # -- the model's own code paths -----------------------------------------------------

    @property
    def _vq(self):
        return self.model.decoder.quantizer.layers[0]

    def _embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.encoder(pad_to_hop(x, self.hop)[:, None])

    def _encode_one(self, x):
        _, codes, _ = self.model.decoder(self._embed(x), vq=True)  # codes [n_q, 1, T]
        return codes[:, 0]

    def _latent_one(self, x):
        return self._embed(x)[0].T

    def _compute_tables(self):
        return [layer.vq2emb(torch.arange(layer.codebook.num_embeddings, device=self.device)[None])[0]
                for layer in self.model.decoder.quantizer.layers]

    @torch.no_grad()
    def quantized(self, codes, layers=None):
        codes = codes.to(self.device)
        if layers is None:
            return self.model.decoder.vq2emb(codes.transpose(1, 2))
        qs = self.model.decoder.quantizer.layers
        return self._sum_layers(codes, layers, lambda l, c: qs[l].vq2emb(c).transpose(1, 2))

    def _decode_quantized(self, q):
        return self.model.decoder(q.transpose(1, 2), vq=False).squeeze(1)

    def reference_decode(self, codes: torch.Tensor) -> torch.Tensor:
        """The release's decode: ``decoder(decoder.vq2emb(codes [B, T, n_q]).transpose(1, 2), vq=False)``."""
        with torch.no_grad():
            emb = self.model.decoder.vq2emb(codes.to(self.device).transpose(1, 2)).transpose(1, 2)
            return self.model.decoder(emb, vq=False).squeeze(1)

    # -- random control and saving ------------------------------------------------------

    @torch.no_grad()
    def init_codebooks(self, seed: int) -> None:
        """random_init: scale the latent and the output to speech-like levels on the
        calibration signal, then draw the 8-d codebook from its in_proj of the latent."""
        x = calibration_batch(self.sample_rate, seed, self.calibration_seconds).to(self.device)
        enc_out = self.model.encoder.block[-1]
        _rescale(enc_out, LATENT_RMS / float(self._embed(x).pow(2).mean().sqrt().clamp(min=1e-12)))
        resid = self._embed(x)[0].T

        def layer_fns(q):
            def set_cb(rows):
                q.codebook.weight.copy_(rows)

            return set_cb, (lambda r: q.in_proj(r)), (lambda r: q(r.T[None])[0][0].T)

        init_residual_codebooks(resid, [layer_fns(q) for q in self.model.decoder.quantizer.layers],
                                self.codebook_sizes[0], seed)
        # The decoder's last convolution sets the level before the tanh: a random decoder
        # would otherwise saturate it and decode every code to a square wave.
        pre_tanh = self.model.decoder.model[:-1]
        out = pre_tanh(self._encode_q(x).transpose(1, 2))
        _rescale(self.model.decoder.model[-2], OUTPUT_RMS / float(out.pow(2).mean().sqrt().clamp(min=1e-12)))
        self._table_cache = None

    def _encode_q(self, x):
        return self.quantized(self._encode_one(x)[None])

    def save(self, out) -> Path:
        """The release's layout: ``bigcodec.pt`` (``{"CodecEnc": ..., "generator": ...}``, weight
        norm as ``weight_g`` / ``weight_v``) and ``config.json`` (the architecture)."""
        out = Path(out)
        state = {"CodecEnc": _legacy_keys(self.model.encoder.state_dict()),
                 "generator": _legacy_keys(self.model.decoder.state_dict())}
        with atomic_dir(out) as tmp:
            torch.save(state, tmp / WEIGHTS)
            (tmp / CONFIG).write_text(json.dumps(self.model.config.to_dict(), indent=2) + "\n")
        return out


def _rescale(conv: torch.nn.Module, gain: float) -> None:
    """Multiply a weight-normed layer's output by ``gain`` (its magnitude ``g``; bias too)."""
    conv.parametrizations.weight.original0.mul_(gain)
    if conv.bias is not None:
        conv.bias.mul_(gain)


def _variance_preserving_init(model: BigCodecModel) -> None:
    """Weights of std ``1/sqrt(fan_in)`` (the release's std-0.02 init shrinks the signal
    through every convolution), each residual branch scaled by 1/2 so 15 residual units
    do not blow the signal up, and the quantizer's projections tied (in_proj orthonormal
    rows, out_proj its transpose) so the quantized vector lies near the latent."""
    for m in model.modules():
        if not hasattr(m, "parametrizations"):
            continue
        v = m.parametrizations.weight.original1
        with torch.no_grad():
            v.normal_(0.0, fan_in(m, v) ** -0.5)
            _set_magnitude(m)
            if m.bias is not None:
                m.bias.zero_()
    for m in model.modules():
        if isinstance(m, ResidualUnit):
            with torch.no_grad():
                _rescale(m.block[-1], 0.5)
    for q in model.decoder.quantizer.layers:
        d_code, d_model = q.in_proj.parametrizations.weight.original1.shape
        w, _ = torch.linalg.qr(torch.randn(d_model, d_code))  # [D, d], orthonormal columns
        with torch.no_grad():
            q.in_proj.parametrizations.weight.original1.copy_(w.T)
            q.out_proj.parametrizations.weight.original1.copy_(w)
            _set_magnitude(q.in_proj)
            _set_magnitude(q.out_proj)


def _set_magnitude(m: torch.nn.Module) -> None:
    """Weight norm's ``g`` = ``|v|`` (per output slice), so the effective weight is ``v``."""
    p = m.parametrizations.weight
    v = p.original1
    p.original0.copy_(torch.linalg.vector_norm(v, dim=tuple(range(1, v.ndim)), keepdim=True))


def _legacy_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parametrized weight-norm keys -> the release's ``weight_g`` / ``weight_v``."""
    out = {}
    for k, v in state.items():
        k = k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v")
        out[k] = v.detach().cpu().contiguous()
    return out


def _find_weights(p: Path) -> Path:
    if p.is_file():
        return p
    if not p.is_dir():
        raise CodeclensError(f"bigcodec: checkpoint not found: {p}")
    found = [f for pattern in ("*.pt", "*.pth", "*.pkl", "*.ckpt") for f in sorted(p.glob(pattern))]
    if len(found) != 1:
        what = "no" if not found else f"{len(found)}"
        raise CodeclensError(f"bigcodec: {what} weights files (*.pt, *.pth, *.pkl, *.ckpt) in '{p}'; pass checkpoint=FILE")
    return found[0]


def _architecture(ckpt: str | None, config: str | None) -> BigCodecConfig:
    """``config=FILE``, else the ``config.json`` in or beside ``ckpt``, else the release's."""
    if config:
        path = Path(config).expanduser()
        if not path.is_file():
            raise CodeclensError(f"bigcodec: config not found: {path}")
    else:
        p = Path(ckpt).expanduser() if ckpt else None
        path = None if p is None else (p / CONFIG if p.is_dir() else p.parent / CONFIG)
        if path is None or not path.is_file():
            if ckpt and not (p.is_dir() or p.is_file()):
                raise CodeclensError(f"bigcodec: checkpoint not found: {p}")
            return FULL
    try:
        return BigCodecConfig.from_dict(json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as e:
        raise CodeclensError(f"bigcodec: cannot read config '{path}': {str(e).splitlines()[0]}") from None


def _load_release_state(model: BigCodecModel, weights: Path) -> None:
    if weights.suffix == ".safetensors":
        raise CodeclensError(f"bigcodec: '{weights}' is a safetensors file; expected the release's torch file "
                             "holding 'CodecEnc' and 'generator' state dicts")
    state = load_state_file(weights)
    parts = {k: state.get(k) for k in ("CodecEnc", "generator")}
    bad = [k for k, v in parts.items() if not isinstance(v, dict)]
    if bad:
        keys = ", ".join(sorted(map(str, state))[:4])
        raise CodeclensError(f"bigcodec: '{weights}' is not a BigCodec checkpoint (expected nested 'CodecEnc' and "
                             f"'generator' state dicts; found keys {keys or 'none'})")
    for name, module in (("CodecEnc", model.encoder), ("generator", model.decoder)):
        sd = {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in parts[name].items()}
        try:
            missing, unexpected = module.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches: another size of the architecture
            raise CodeclensError(f"bigcodec: '{weights}' [{name}] does not match the architecture: "
                                 f"{str(e).strip().splitlines()[-1].strip()[:200]}") from None
        if missing or unexpected:
            raise CodeclensError(f"bigcodec: '{weights}' [{name}] does not match the architecture (missing "
                                 f"{len(missing)} keys e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]})")


def _from_hub() -> Path:
    from ._hf import hub_reachable, offline

    hint = "pass checkpoint=bigcodec.pt (the release's file) or random_init=1"
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CodeclensError(f"bigcodec: huggingface_hub is not installed; {hint}") from None
    try:
        return Path(hf_hub_download(HUB[0], HUB[1], local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached
        pass
    if offline() or not hub_reachable():
        raise CodeclensError(f"bigcodec: {HUB[0]} is not in the local Hugging Face cache and the hub is not reachable; {hint}")
    try:
        return Path(hf_hub_download(HUB[0], HUB[1]))
    except Exception as e:  # noqa: BLE001
        raise CodeclensError(f"bigcodec: cannot fetch {HUB[0]}/{HUB[1]} ({type(e).__name__}); {hint}") from None
