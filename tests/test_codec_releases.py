"""Every adapter on the EXACT configurations of the released checkpoints.

The released weights cannot be downloaded here, so each release's published config.json
values are test data (tests/release_configs/*.json). A full-size model is built from
them with random weights (``random_init=1&checkpoint=DIR`` reads only the
architecture), and the adapter invariants are checked on it through the same code
``codeclens codec check`` runs: published frame rate and layer counts, exact frame
counts, sum of lookups = the model's quantized output, decode = the model's own
decode, dropped layers contribute nothing, batch independence. 0.5 s of audio each.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from codeclens.codecs import load_codec
from codeclens.codecs.check import run_checks

RELEASES = Path(__file__).parent / "release_configs"

# release file, spec kind:target (without options), sample rate, frame rate, layers
CASES = [
    ("encodec_24khz", "encodec:24khz@1.5kbps", 24000, 75.0, 2),
    ("encodec_24khz", "encodec:24khz@3kbps", 24000, 75.0, 4),
    ("encodec_24khz", "encodec:24khz@6kbps", 24000, 75.0, 8),
    ("encodec_24khz", "encodec:24khz@12kbps", 24000, 75.0, 16),
    ("encodec_24khz", "encodec:24khz@24kbps", 24000, 75.0, 32),
    ("encodec_48khz", "encodec:48khz@3kbps", 48000, 150.0, 2),
    ("encodec_48khz", "encodec:48khz@6kbps", 48000, 150.0, 4),
    ("encodec_48khz", "encodec:48khz@12kbps", 48000, 150.0, 8),
    ("encodec_48khz", "encodec:48khz@24kbps", 48000, 150.0, 16),
    ("dac_16khz", "dac:16khz", 16000, 50.0, 12),
    ("dac_24khz", "dac:24khz", 24000, 75.0, 32),
    ("dac_44khz", "dac:44khz", 44100, 44100 / 512, 9),
    ("mimi", "mimi", 24000, 12.5, 8),
    ("speechtokenizer", "speechtokenizer", 16000, 50.0, 8),
    ("xcodec_hubert_librispeech", "xcodec:4kbps", 16000, 50.0, 8),
]
#: Bandwidths of one release share a model: the full check runs on the largest; the
#: others check rates, layer counts and the lookup identity. DAC 24/44 kHz's 1536-channel
#: decoders take minutes per second of audio on a shared CPU: at full size they get the
#: encoder-side checks, and their decode checks run at size=tiny (same strides) in
#: test_codecs_check.py.
FULL_CHECK = {"encodec:24khz@24kbps", "encodec:48khz@24kbps", "dac:16khz", "mimi", "speechtokenizer", "xcodec:4kbps"}
ENCODER_CHECKS = ["frame rate", "frame count", "lookup = quantized"]
ALL_CHECKS = ENCODER_CHECKS + ["decode = model decode", "dropped layers", "batch independence"]
#: Seconds of calibration signal for the random codebooks (the default 8 s costs a minute
#: through a full-size DAC encoder here) and of test audio.
CALIBRATION, SECONDS = 1.0, 0.5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """name -> a directory holding the release's config.json (published values only)."""
    cache: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in cache:
            cfg = json.loads((RELEASES / f"{name}.json").read_text())
            cfg.pop("_source")
            d = tmp_path_factory.mktemp(name)
            (d / "config.json").write_text(json.dumps(cfg))
            cache[name] = d
        return cache[name]

    return get


@pytest.fixture(scope="module")
def built(release_dir, tmp_path_factory):
    """One random full-size model per release, saved and reloaded through the real loader."""
    cache: dict[str, tuple[Path, object]] = {}

    def get(name: str, spec: str):
        if name not in cache:
            codec = load_codec(f"{spec}?random_init=1&calibration={CALIBRATION}&checkpoint={release_dir(name)}", "cpu")
            out = tmp_path_factory.mktemp(f"saved-{name}")
            codec.save(out)
            cache[name] = out
        return load_codec(f"{spec}?checkpoint={cache[name]}", "cpu")

    return get


@pytest.mark.parametrize("name, spec, sr, fr, n_layers", CASES, ids=[c[1] for c in CASES])
def test_release_configuration(name, spec, sr, fr, n_layers, built):
    codec = built(name, spec)
    assert (codec.sample_rate, codec.n_layers) == (sr, n_layers)
    assert codec.frame_rate == pytest.approx(fr, rel=1e-12)
    results = run_checks(codec, seconds=SECONDS, seed=1, only=ALL_CHECKS if spec in FULL_CHECK else ENCODER_CHECKS)
    failed = [r for r in results if r.passed is False]
    assert not failed, failed
    assert all(r.passed for r in results)  # none skipped: every built-in has a reference decode


def test_dac_release_configs_carry_a_stale_hop_that_is_ignored(release_dir):
    """The bug this guards: dac_16khz's config.json says hop_length 512, its strides give 320.
    Trusting the key made the adapter report 31.25 Hz and keep only part of the frames."""
    cfg = json.loads((release_dir("dac_16khz") / "config.json").read_text())
    assert cfg["hop_length"] == 512 and math.prod(cfg["downsampling_ratios"]) == 320
    codec = load_codec(f"dac:16khz?random_init=1&calibration=0.5&checkpoint={release_dir('dac_16khz')}", "cpu")
    assert codec.hop == 320 and codec.frame_rate == 50.0
    n = 16000 + 7
    codes, nf = codec.encode(torch.randn(1, n) * 0.1, torch.tensor([n]))
    assert int(nf[0]) == codes.shape[-1] == math.ceil(n / 320) == 51


def test_encodec_48khz_is_chunked_exactly_as_the_model(built):
    """Over 1 s the 48 kHz model encodes 1 s chunks every 47520 samples, each normalised by
    its own scale; the adapter's codes are those chunks' codes in order, and decode with the
    scales is the model's own decode (overlap-add and scale included)."""
    from codeclens.codecs.calibration import calibration_audio

    codec = built("encodec_48khz", "encodec:48khz@6kbps")
    n = 2 * 47520 + 1000  # three chunks, the last one short
    x = torch.from_numpy(calibration_audio(48000, 2.1, 3))[:n] * torch.linspace(0.05, 1.5, n)  # chunk scales differ
    codes, nf = codec.encode(x[None], torch.tensor([n]))
    ref = codec.model.encode(x[None, None].expand(-1, 2, -1), bandwidth=6.0)
    chunks = ref.audio_codes  # [chunks, 1, L, 150]
    assert chunks.shape[0] == 3 == len(codec.chunks(n))
    flat = torch.cat(list(chunks[:, 0]), dim=-1)[..., : flat_len(chunks, ref.last_frame_pad_length)]
    assert int(nf[0]) == 150 + 150 + math.ceil(1000 / 320) == flat.shape[-1]
    assert torch.equal(codes[0], flat)
    scales = codec.scales(x[None], torch.tensor([n]))
    assert torch.allclose(scales[0], torch.cat([s.flatten() for s in ref.audio_scales]))
    assert float(scales.max() / scales.min()) > 3  # the test would not see a dropped scale otherwise
    with torch.no_grad():
        own = codec.model.decode(ref.audio_codes, ref.audio_scales, last_frame_pad_length=ref.last_frame_pad_length)[0].mean(1)
    mine = codec.decode(codes, scales=scales)
    assert mine.shape == own.shape
    assert float((mine - own).abs().max() / own.abs().max()) < 1e-5
    # Without scales: the normalised decode, off by each chunk's scale (what ablate got before).
    unit = codec.decode(codes)
    assert float((unit - own).abs().max() / own.abs().max()) > 0.1
    # Frame times: chunk c starts at c * 47520 samples; frame 150 is chunk 1's first frame.
    t = codec.frame_times(int(nf[0])) * 48000
    d = codec.describe()  # what the store manifest records
    assert (d["chunk_samples"], d["chunk_stride_samples"], d["frame_offset_s"]) == (48000, 47520, 0.0)
    assert t[0] == 160 and t[149] == 149 * 320 + 160 and t[150] == 47520 + 160


def flat_len(chunks: torch.Tensor, pad: int) -> int:
    return chunks.shape[0] * chunks.shape[-1] - pad
