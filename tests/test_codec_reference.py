"""Cross-check against a reference implementation: Meta's ``encodec`` package (PyPI 0.1.1).

The same random weights are loaded into the reference model and, renamed to
transformers' layout and saved as an ordinary checkpoint, into our adapter through the
real loader. Codes must be identical and decodes equal to 1e-5 relative (float32
summation order differs). The 48 kHz model checks chunking, per-chunk scales and
overlap-add against the package's own. Other reference packages: see docs/codecs.md.
"""

from __future__ import annotations

import contextlib
import re
import sys
import types

import pytest
import torch

from codeclens.codecs import load_codec
from codeclens.codecs._hf import hf_class, save_pretrained_atomic
from codeclens.codecs.calibration import calibration_audio


@contextlib.contextmanager
def _torchaudio_stub():
    """encodec.utils imports torchaudio (for file I/O the model never uses); the installed one
    does not load beside this torch, so a stand-in is present while encodec is imported."""
    had = sys.modules.get("torchaudio")
    sys.modules["torchaudio"] = types.ModuleType("torchaudio")
    try:
        yield
    finally:
        if had is None:
            sys.modules.pop("torchaudio", None)
        else:
            sys.modules["torchaudio"] = had


def _encodec():
    try:
        with _torchaudio_stub():
            import encodec
    except ImportError:
        pytest.skip("the encodec package is not installed")
    return encodec


def to_transformers_key(k: str) -> str:
    """encodec's state-dict key -> transformers' ``EncodecModel`` key."""
    k = re.sub(r"^(encoder|decoder)\.model\.", r"\1.layers.", k)
    k = k.replace(".conv.conv.", ".conv.").replace(".convtr.convtr.", ".conv.")
    k = k.replace(".conv.norm.", ".norm.").replace(".convtr.norm.", ".norm.")
    k = k.replace("weight_g", "parametrizations.weight.original0").replace("weight_v", "parametrizations.weight.original1")
    return re.sub(r"quantizer\.vq\.layers\.(\d+)\._codebook\.", r"quantizer.layers.\1.codebook.", k)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(rate: int, tmp_path, bandwidth: float):
    encodec = _encodec()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        ref = getattr(encodec.EncodecModel, f"encodec_model_{rate // 1000}khz")(pretrained=False)
        for layer in ref.quantizer.vq.layers:  # random codebooks, marked initialised (no k-means)
            cb = layer._codebook
            cb.embed.copy_(torch.randn_like(cb.embed))
            cb.embed_avg.copy_(cb.embed)
            cb.inited.fill_(1.0)
    ref.eval().set_target_bandwidth(bandwidth)
    EncodecConfig, EncodecModel = hf_class("EncodecConfig"), hf_class("EncodecModel")
    kw = {}
    if rate == 48000:
        kw = dict(sampling_rate=48000, audio_channels=2, normalize=True, chunk_length_s=1.0, overlap=0.01,
                  target_bandwidths=[3.0, 6.0, 12.0, 24.0], norm_type="time_group_norm", use_causal_conv=False)
    hf = EncodecModel(EncodecConfig(**kw))
    state = {to_transformers_key(k): v for k, v in ref.state_dict().items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    save_pretrained_atomic(hf, tmp_path / "ckpt")
    return ref, load_codec(f"encodec:{rate // 1000}khz@{bandwidth:g}kbps?checkpoint={tmp_path / 'ckpt'}", "cpu")


def _rel(a, b):
    return float((a - b).abs().max() / b.abs().max())


def test_encodec_24khz_matches_the_reference_package(tmp_path):
    ref, codec = _pair(24000, tmp_path, 6.0)
    x = torch.from_numpy(calibration_audio(24000, 0.8, 4))[:19001]
    with torch.no_grad():
        frames = ref.encode(x[None, None])
        assert len(frames) == 1 and frames[0][1] is None  # one chunk, no scale at 24 kHz
        want = frames[0][0][0]  # [K, T]
        y_ref = ref.decode(frames)[0, 0]
    codes, n = codec.encode(x[None], torch.tensor([len(x)]))
    assert torch.equal(codes[0], want) and int(n[0]) == want.shape[-1] == 60
    y = codec.decode(codes)[0]
    assert y.shape == y_ref.shape and _rel(y, y_ref) < 1e-5


def test_encodec_48khz_chunks_scales_and_overlap_add_match_the_reference_package(tmp_path):
    ref, codec = _pair(48000, tmp_path, 6.0)
    n = 47520 + 20000  # two chunks
    x = torch.from_numpy(calibration_audio(48000, 1.5, 5))[:n] * torch.linspace(0.1, 1.0, n)
    with torch.no_grad():
        frames = ref.encode(x[None, None].expand(-1, 2, -1).contiguous())
        y_ref = ref.decode(frames).mean(1)[0]
    assert len(frames) == 2
    codes, nf = codec.encode(x[None], torch.tensor([n]))
    assert torch.equal(codes[0], torch.cat([f[0][0] for f in frames], -1))
    scales = codec.scales(x[None], torch.tensor([n]))
    assert torch.allclose(scales[0], torch.cat([f[1].flatten() for f in frames]), rtol=1e-6)
    y = codec.decode(codes, scales=scales)[0]
    assert y.shape == y_ref.shape and _rel(y, y_ref) < 1e-5
