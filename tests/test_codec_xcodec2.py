"""X-codec2 and NeuCodec (transformers' Xcodec2Model / NeuCodecModel) against known answers.

- the input pipeline: codes equal transformers' own feature extractor + ``model.encode``
  (its torchaudio Kaldi filterbank, loaded from torchaudio's pure-torch source file);
- the FSQ tables: the projected implicit codebook is what the decoder receives, the 8
  per-dimension tables of ``fsq_split=1`` sum to it exactly, and dropped dimensions
  contribute nothing;
- every invariant of ``codeclens codec check`` on tiny models saved and reloaded, and on
  the releases' exact configurations;
- frame counts, frame-centre geometry, NeuCodec's 24 kHz decode and its resampler against
  scipy, the random_init control's branches, loading errors and bf16 checkpoints.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.check import measure_frame_offset, run_checks
from codeclens.codecs.neucodec import resample_poly
from codeclens.codecs.testing import save_random_checkpoint
from codeclens.errors import CodeclensError

KINDS = ["xcodec2", "neucodec"]
INVARIANTS = ["frame rate", "frame count", "lookup = quantized", "decode = model decode", "dropped layers",
              "batch independence"]
RELEASES = Path(__file__).parent / "release_configs"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """kind -> spec reloading a tiny random checkpoint saved through save_pretrained."""
    cache: dict[str, str] = {}

    def get(kind: str) -> str:
        if kind not in cache:
            cache[kind] = save_random_checkpoint(f"{kind}?size=tiny&calibration=2", tmp_path_factory.mktemp(kind), seed=0)
        return cache[kind]

    return get


@pytest.fixture(scope="module")
def codec(saved):
    cache: dict[tuple, object] = {}

    def get(kind: str, split: bool = False):
        if (kind, split) not in cache:
            cache[kind, split] = load_codec(saved(kind) + ("&fsq_split=1" if split else ""), "cpu")
        return cache[kind, split]

    return get


def _speech(seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(calibration_audio(16000, seconds, seed))


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


# -- the invariants -------------------------------------------------------------------------

@pytest.mark.parametrize("split", [False, True], ids=["codebook", "fsq_split"])
@pytest.mark.parametrize("kind", KINDS)
def test_every_check_passes_on_the_reloaded_tiny_model(kind, split, codec):
    results = run_checks(codec(kind, split), seconds=0.5, seed=2, only=INVARIANTS)  # offsets: below
    assert [r for r in results if r.passed is False] == []
    assert {r.name for r in results if r.passed} >= {"frame rate", "frame count", "lookup = quantized",
                                                     "decode = model decode", "dropped layers", "batch independence"}


def test_codec_check_cli_passes(capsys):
    assert main(["codec", "check", "xcodec2?size=tiny&random_init=1&calibration=1", "--seconds", "0.5",
                 "--only", "frame count,lookup = quantized,decode = model decode"]) == 0
    assert "FAIL" not in capsys.readouterr().out


@pytest.mark.parametrize("kind", KINDS)
def test_sum_of_lookups_is_the_models_own_quantized_output(kind, codec):
    """The model's ``encode(output_latents=True)`` returns project_out of the grid point it chose:
    the adapter's table row of the adapter's code must be exactly that vector."""
    c = codec(kind)
    x = _speech(0.7, 3)[None]
    values, feats = c.features(x)
    with torch.no_grad():
        out = c.model.encode(values, input_features=feats, output_latents=True)
    lengths = torch.tensor([x.shape[1]])
    codes, n = c.encode(x, lengths)
    assert torch.equal(codes, out.audio_codes) and int(n[0]) == codes.shape[-1]
    assert _rel(c.lookup(codes), out.latents.transpose(1, 2)) < 1e-6
    # The adapter's latent is the quantizer's input: quantizing it gives the model's codes.
    z, _ = c.latent(x, lengths)
    with torch.no_grad():
        assert torch.equal(c.model.quantizer(z)[1].transpose(1, 2), codes)
    split = codec(kind, True)
    assert _rel(split.lookup(split.encode(x, lengths)[0]), out.latents.transpose(1, 2)) < 1e-6


# -- FSQ: the projected codebook and its exact split -----------------------------------------

def test_fsq_split_tables_sum_to_the_projected_codebook_exactly(codec):
    full, split = codec("xcodec2"), codec("xcodec2", True)
    assert (full.n_layers, full.codebook_sizes) == (1, [65536])
    assert (split.n_layers, split.codebook_sizes) == (8, [4] * 8)
    table = full.tables()[0]
    assert table.shape == (65536, full.dim)
    every = torch.arange(65536)[None, None]  # all codes at once, as one utterance of 65536 frames
    levels = split.split_codes(every)
    assert torch.equal(split.join_codes(levels), every)
    assert int(levels.min()) == 0 and int(levels.max()) == 3
    summed = split.lookup(levels)[0]
    assert float((summed - table).abs().max()) < 1e-5 * float(table.abs().max())
    # The projected codebook is project_out of the FSQ grid: code c's level v_d = (c // 4^d) % 4
    # has grid value (v_d - 2) / 2 (analytic), whatever the model's buffers say.
    q = full.model.quantizer
    c = torch.tensor([0, 1, 4, 65535, 12345])
    grid = torch.stack([((c // 4**d) % 4 - 2) / 2 for d in range(8)], 1).float()
    with torch.no_grad():
        assert torch.allclose(table[c], q.project_out(grid), atol=1e-6)


def test_dropped_fsq_dimensions_contribute_nothing(codec):
    split = codec("xcodec2", True)
    x = _speech(0.5, 4)[None]
    codes, _ = split.encode(x, torch.tensor([x.shape[1]]))
    keep = [0, 2, 5]
    q = split.quantized(codes, keep)
    assert _rel(split.lookup(codes, keep), q) < 1e-6
    scrambled = codes.clone()
    scrambled[:, [1, 3, 4, 6, 7]] = (codes[:, [1, 3, 4, 6, 7]] + 1) % 4
    assert torch.equal(split.quantized(scrambled, keep), q)
    assert float(split.quantized(codes, []).abs().max()) == 0.0
    # Each kept dimension adds its own column times its grid value, plus an eighth of the bias.
    po = split.model.quantizer.project_out
    one = split.quantized(codes, [2])
    want = ((codes[:, 2] - 2) / 2.0)[..., None] * po.weight[:, 2].detach() + po.bias.detach() / 8
    assert _rel(one, want) < 1e-6


# -- the input pipeline against transformers' own feature extractor ---------------------------

@contextlib.contextmanager
def _torchaudio_kaldi():
    """torchaudio's own ``compliance/kaldi.py`` (pure torch) under a stand-in ``torchaudio``:
    the installed torchaudio's binary does not load beside this torch."""
    spec = importlib.util.find_spec("torchaudio")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("torchaudio's source is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "compliance" / "kaldi.py"
    if not path.is_file():
        pytest.skip("torchaudio has no compliance/kaldi.py")
    saved = {k: sys.modules[k] for k in list(sys.modules) if k == "torchaudio" or k.startswith("torchaudio.")}
    stub = types.ModuleType("torchaudio")
    stub.compliance = types.ModuleType("torchaudio.compliance")
    sys.modules.update({"torchaudio": stub, "torchaudio.compliance": stub.compliance})
    try:
        kspec = importlib.util.spec_from_file_location("torchaudio.compliance.kaldi", path)
        kaldi = importlib.util.module_from_spec(kspec)
        kspec.loader.exec_module(kaldi)
        stub.compliance.kaldi = kaldi
        yield kaldi
    finally:
        for k in [k for k in sys.modules if k == "torchaudio" or k.startswith("torchaudio.")]:
            del sys.modules[k]
        sys.modules.update(saved)


@pytest.mark.parametrize("kind, fe_module, fe_class", [
    ("xcodec2", "transformers.models.xcodec2.feature_extraction_xcodec2", "Xcodec2FeatureExtractor"),
    ("neucodec", "transformers.models.neucodec.modular_neucodec", "NeuCodecFeatureExtractor"),
])
def test_codes_equal_transformers_own_feature_extractor_and_encode(kind, fe_module, fe_class, codec):
    c = codec(kind)
    with _torchaudio_kaldi():
        module = importlib.import_module(fe_module)
        importlib.reload(module)  # bind the stand-in torchaudio whatever imported it before
        fe = getattr(module, fe_class)(hop_length=c.hop)
        for n in (16000, 320 * 37, 320 * 37 + 1, 11111):
            x = _speech(n / 16000 + 0.01, n)[:n]
            ref = fe(x.numpy(), sampling_rate=16000, return_tensors="pt")
            values, feats = c.features(x[None])
            assert torch.equal(values, ref["input_values"])
            assert feats.shape == ref["input_features"].shape
            assert float((feats - ref["input_features"]).abs().max()) < 5e-4  # float32 FFT order; features ~N(0, 1)
            with torch.no_grad():
                want = c.model.encode(ref["input_values"], input_features=ref["input_features"]).audio_codes
            codes, nf = c.encode(x[None], torch.tensor([n]))
            assert int(nf[0]) == c.frames_for(n) == want.shape[-1]
            assert int((codes != want).sum()) <= 1  # measured: all equal; one FSQ rounding tie may flip in float32


def test_kaldi_fbank_matches_torchaudio():
    from codeclens.codecs.xcodec2 import kaldi_fbank

    x = _speech(0.8, 6)
    with _torchaudio_kaldi() as kaldi:
        ref = kaldi.fbank(x[None] * 2**15, num_mel_bins=80, frame_length=25.0, frame_shift=10.0, sample_frequency=16000,
                          window_type="povey", preemphasis_coefficient=0.97, remove_dc_offset=True, use_log_fbank=True,
                          use_energy=False, dither=0.0, snip_edges=True, low_freq=20, high_freq=8000)
    mine = kaldi_fbank(x, 16000)
    assert mine.shape == ref.shape == (1 + (len(x) - 400) // 160, 80)
    assert float((mine - ref).abs().max()) < 1e-3


# -- frames ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind, rule", [
    ("xcodec2", lambda n: math.ceil((n + 1) / 320)),   # one zero appended, then whole hops
    ("neucodec", lambda n: n // 320),                  # the semantic half's one frame fewer
])
def test_exact_frame_counts(kind, rule, codec):
    c = codec(kind)
    x = _speech(1.2, 7)
    for n in (320, 321, 639, 640, 641, 16000, 16319):
        codes, nf = c.encode(x[None, :n], torch.tensor([n]))
        assert int(nf[0]) == codes.shape[-1] == rule(n) == c.frames_for(n), n
    assert c.frames_for(320) == (2 if kind == "xcodec2" else 1)


def test_neucodec_refuses_an_utterance_shorter_than_a_hop(codec):
    with pytest.raises(CodeclensError, match="too short") as e:
        codec("neucodec").encode(torch.zeros(1, 300), torch.tensor([300]))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("kind, semantic_ms", [("xcodec2", -2.5), ("neucodec", 7.5)])
def test_frame_centre_offsets(kind, semantic_ms, codec):
    """Semantic frame k stacks log-mel frames 2k, 2k+1 (400-sample windows every 160 samples):
    X-codec2 pads the input by 160 each side, so they span [320k - 160, 320k + 400), centred
    40 samples early; NeuCodec does not pad: [320k, 320k + 560), 120 samples late. The
    acoustic encoder's (finite) receptive field is centred to within a few ms."""
    c = codec(kind)
    mel = measure_frame_offset(c, seconds=2.0, latent=c.mel_frames)
    assert mel.rule == "support" and mel.offset_s * 1000 == pytest.approx(semantic_ms, abs=1e-6), mel
    assert mel.support == ((-160, 399) if kind == "xcodec2" else (0, 559))
    acoustic = measure_frame_offset(c, seconds=4.0, latent=lambda x: c.halves(x)[0][0].T)
    assert acoustic.rule == "support" and abs(acoustic.offset_s - c.half_offsets["acoustic"]) < 1.5e-3, acoustic
    d = c.describe()
    assert d["frame_offset_halves_s"] == {"acoustic": -0.0025, "semantic": semantic_ms / 1000}
    assert d["frame_offset_s"] == pytest.approx((semantic_ms / 1000 - 0.0025) / 2)
    assert d["codebook_sizes"] == [65536] and d["fsq_levels"] == [4] * 8


# -- NeuCodec's 24 kHz decoder -----------------------------------------------------------------

def test_resampler_is_scipys_resample_poly_and_keeps_a_tone():
    from scipy.signal import resample_poly as scipy_resample

    x = np.random.default_rng(0).standard_normal((2, 24001)).astype(np.float32)
    mine = resample_poly(torch.from_numpy(x), 2, 3).numpy()
    assert mine.shape == (2, 16001)
    assert np.abs(mine - scipy_resample(x, 2, 3, axis=1)).max() < 1e-5
    t24, t16 = np.arange(24000) / 24000, np.arange(16000) / 16000
    tone = resample_poly(torch.from_numpy(np.sin(2 * np.pi * 1000 * t24).astype(np.float32))[None], 2, 3)[0].numpy()
    assert np.abs(tone - np.sin(2 * np.pi * 1000 * t16))[200:-200].max() < 2e-3  # Kaiser (beta 5) passband ripple


def test_neucodec_decodes_at_24khz_and_returns_it_at_the_input_rate(codec):
    c = codec("neucodec")
    assert (c.sample_rate, c.output_sample_rate, c.frame_rate) == (16000, 24000, 50.0)
    x = _speech(0.6, 8)[None]
    codes, _ = c.encode(x, torch.tensor([x.shape[1]]))
    t = codes.shape[-1]
    native = c.decode_native(codes)
    with torch.no_grad():
        own = c.model.decode(audio_codes=codes).audio_values[:, 0]
    assert native.shape == own.shape == (1, 480 * t) and torch.equal(native, own)
    out = c.decode(codes)
    assert out.shape == (1, 320 * t)
    assert torch.allclose(out, resample_poly(own, 2, 3), atol=1e-6)
    assert c.describe()["output_sample_rate"] == 24000


# -- random_init -----------------------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_random_control_exercises_both_branches_and_the_fsq_grid(kind, codec):
    c = codec(kind)
    x = _speech(1.5, 9)[None]  # not the calibration signal
    with torch.no_grad():
        ac, sem = c.halves(x)
        z = c._embed(x)[0]
    ratio = float(ac.pow(2).mean().sqrt() / sem.pow(2).mean().sqrt())
    assert 0.1 < ratio < 10, ratio
    codes, _ = c.encode(x, torch.tensor([x.shape[1]]))
    levels = c.split_codes(codes)[0]
    assert all(len(torch.unique(levels[d])) >= 3 for d in range(8)), levels  # every dimension uses its grid
    assert len(torch.unique(codes)) > codes.shape[-1] // 4
    q = c.quantized(codes)[0]
    assert float((q - z).norm() / (z - z.mean(0)).norm()) < 1.0  # the grid read-out beats the latent's mean
    y = c.decode(codes)
    assert 0.1 < float(y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()) < 10  # decodes at the input's level


# -- loading ------------------------------------------------------------------------------------

def test_reload_gives_the_same_codec_and_bf16_checkpoints_load_as_float32(saved, codec, tmp_path):
    from codeclens.codecs._hf import hf_class

    c = codec("xcodec2")
    x = _speech(0.5, 10)[None]
    n = torch.tensor([x.shape[1]])
    path = saved("xcodec2").split("checkpoint=")[1]
    model = hf_class("Xcodec2Model").from_pretrained(path, dtype=torch.float32)
    assert torch.equal(load_codec(saved("xcodec2"), "cpu").tables()[0], c.tables()[0])
    model.to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    half = load_codec(f"xcodec2?checkpoint={tmp_path / 'bf16'}", "cpu")
    assert {p.dtype for p in half.model.parameters()} == {torch.float32}
    assert half.tables()[0].dtype == torch.float32
    codes, _ = half.encode(x, n)
    assert _rel(half.decode(codes), half.reference_decode(codes)) < 1e-5
    assert _rel(half.tables()[0], c.tables()[0]) < 1e-2  # bf16-rounded weights


def test_a_config_that_disagrees_with_its_weights_is_a_one_line_error(saved, tmp_path):
    import shutil

    src = Path(saved("xcodec2").split("checkpoint=")[1])
    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["hidden_size"] = 64
    cfg["quantization_dim"] = 80
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodeclensError) as e:
        load_codec(f"xcodec2?checkpoint={bad}", "cpu")
    assert str(bad) in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)
    assert main(["codec", "info", f"xcodec2?checkpoint={bad}"]) == 2


def test_bad_specs_are_one_line_errors(saved):
    with pytest.raises(CodeclensError, match="holds a 'xcodec2' model, not 'neucodec'"):
        load_codec(saved("xcodec2").replace("xcodec2?", "neucodec?", 1), "cpu")
    with pytest.raises(CodeclensError, match="bandwidth") as e:
        load_codec("xcodec2?bandwidth=2&random_init=1&size=tiny", "cpu")
    assert "fsq_split" in str(e.value)  # the error lists the known options
    with pytest.raises(CodeclensError, match="takes no target"):
        load_codec("xcodec2:4kbps?random_init=1&size=tiny", "cpu")
    with pytest.raises(CodeclensError, match="size"):
        load_codec("neucodec?random_init=1&size=huge", "cpu")


def test_store_holds_65536_codes_as_int32(saved, tmp_path, audio_folder):
    from codeclens.store import Store

    out = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", saved("xcodec2"), "--out", str(out),
                 "--labels", "none", "--quiet", "--device", "cpu"]) == 0
    st = Store(out)
    assert st.codes.dtype == np.int32 and st.tables[0].shape[0] == 65536
    assert st.codec["fsq_levels"] == [4] * 8


# -- the released configurations ------------------------------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_release_configuration(kind, tmp_path):
    """The release's exact config.json values, full widths (2048-d latent, 1024-d decoder and
    semantic model, 4^8 FSQ). Depth is reduced to one transformer layer in each of the semantic
    model and the decoder: see REDUCED_DEPTH."""
    cfg = json.loads((RELEASES / f"{kind}.json").read_text())
    cfg.pop("_source")
    assert cfg["quantization_levels"] == [4] * 8 and math.prod(cfg["downsampling_ratios"]) == 320
    cfg.update(REDUCED_DEPTH)
    cfg["semantic_model_config"] = {**cfg["semantic_model_config"], **REDUCED_DEPTH}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    c = load_codec(f"{kind}?random_init=1&calibration=1&checkpoint={tmp_path}", "cpu")
    assert (c.sample_rate, c.frame_rate, c.n_layers, c.codebook_sizes, c.dim) == (16000, 50.0, 1, [65536], 2048)
    assert c.model.acoustic_encoder.conv2.in_channels == 48 * 32 and c.model.semantic_encoder.config.hidden_size == 1024
    if kind == "neucodec":
        assert c.output_sample_rate == 24000 and c.model.acoustic_decoder.head.hop_length == 480
    # NeuCodec's encoder and batching are X-codec2's code: its own part is the decoder side.
    only = INVARIANTS if kind == "xcodec2" else ["frame rate", "frame count", "lookup = quantized", "decode = model decode"]
    results = run_checks(c, seconds=0.5, seed=1, only=only)
    assert [r.name for r in results] == only and all(r.passed for r in results), results


#: Full depth (16 conformer + 12 decoder layers, ~0.9 B parameters with the 2048-d FSQ and its
#: 512 MB table) takes minutes to build and calibrate on the shared 2-core test machine; the
#: depth repeats identical layers and changes no shape, rate or identity checked here.
REDUCED_DEPTH = {"num_hidden_layers": 1}
