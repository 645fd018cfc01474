"""``codeclens codec check`` and the fixes of issue 11, each with a test that fails on the bug.

Known answers: invariants that hold by construction on every built-in (so a FAIL is a
bug), a plug-in that breaks one on purpose (so the check can fail), measured frame-centre
offsets against the ones the architectures' geometry implies, and reloads of weights
files and bf16 checkpoints against the float32 originals.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs._hf import encode_items, pad_to_hop
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.check import measure_frame_offset, run_checks
from codeclens.codecs.testing import save_random_checkpoint
from codeclens.errors import CodeclensError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TINY = {
    "encodec24": "encodec:24khz@6kbps?size=tiny",
    "encodec48": "encodec:48khz@3kbps?size=tiny",
    "dac16": "dac:16khz?size=tiny",
    "dac44": "dac:44khz?size=tiny",
    "mimi": "mimi?size=tiny&layers=6",
    "speechtokenizer": "speechtokenizer?size=tiny",
    "xcodec": "xcodec:2kbps?size=tiny",
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_codec(TINY[name] + "&random_init=1&calibration=2", "cpu")
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(TINY))
def test_every_builtin_passes_every_check(name, tiny):
    results = run_checks(tiny(name), seconds=0.6, seed=2)
    assert [r.name for r in results if r.passed is False] == [], results
    judged = {r.name for r in results if r.passed}
    assert {"frame rate", "frame count", "lookup = quantized", "decode = model decode", "dropped layers",
            "batch independence"} <= judged


# -- the CLI, passing and failing -------------------------------------------------------

BAD_PLUGIN = '''
import torch
from toy_codec import ToyCodec


class LeakyDecode(ToyCodec):
    """Ignores ``layers`` in decode: dropped layers still sound."""

    def decode(self, codes, layers=None):
        return super().decode(codes, None)


class ExtraFrame(ToyCodec):
    """Returns one frame more than it declares."""

    def encode(self, waves, lengths):
        codes, n = super().encode(waves, lengths)
        return torch.cat([codes, codes[..., -1:]], -1), n + 1
'''


@pytest.fixture
def bad_plugins(monkeypatch, tmp_path):
    (tmp_path / "bad_codecs.py").write_text(textwrap.dedent(BAD_PLUGIN))
    monkeypatch.syspath_prepend(str(EXAMPLES))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_check_cli_passes_on_a_saved_builtin(tmp_path, capsys):
    spec = save_random_checkpoint("encodec:24khz@1.5kbps?size=tiny&calibration=1", tmp_path / "enc", seed=1)
    assert main(["codec", "check", spec, "--seconds", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "all checks passed" in out and "FAIL" not in out
    assert "75 Hz (8 frames per 2560 samples)" in out  # measured numbers are printed
    assert main(["codec", "check", spec, "--seconds", "0.5", "--json", "--only", "frame count,dropped layers"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["passed"] and [c["name"] for c in got["checks"]] == ["frame count", "dropped layers"]


@pytest.mark.parametrize("cls, failing", [("LeakyDecode", "dropped layers"), ("ExtraFrame", "frame count")])
def test_check_cli_fails_on_a_plugin_that_breaks_an_invariant(cls, failing, bad_plugins, capsys):
    spec = f"python:bad_codecs:{cls}?random_init=1&layers=3&codebook_size=16"
    assert main(["codec", "check", spec, "--seconds", "0.5", "--json"]) == 1
    got = json.loads(capsys.readouterr().out)
    bad = [c["name"] for c in got["checks"] if c["passed"] is False]
    assert failing in bad and not got["passed"]
    # The parent class passes the same checks: the failure is the planted bug.
    assert main(["codec", "check", "python:toy_codec:ToyCodec?random_init=1&layers=3&codebook_size=16",
                 "--seconds", "0.5"]) == 0
    assert "all checks passed" in capsys.readouterr().out


def test_check_cli_bad_input_is_a_one_line_error(capsys):
    assert main(["codec", "check", "dac:16khz?size=tiny&random_init=1", "--only", "colour"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "unknown check" in err and "\n" not in err
    assert main(["codec", "check", "dac:16khz?checkpoint=/no/such/dir"]) == 2


# -- exact frame counts -------------------------------------------------------------------

def test_a_codec_returning_other_than_ceil_frames_is_an_error_not_a_truncation():
    """The old check accepted "at least" ceil(N/hop) frames and cut the rest: with DAC's stale
    hop of 512 on a 320 model, 38% of each utterance's frames were silently dropped."""
    waves, lengths = torch.zeros(1, 16000), torch.tensor([16000])
    with pytest.raises(CodeclensError, match="expected exactly 32"):
        encode_items(lambda x: torch.zeros(12, 50, dtype=torch.long), waves, lengths, 512)
    codes, n = encode_items(lambda x: torch.zeros(12, 50, dtype=torch.long), waves, lengths, 320)
    assert int(n[0]) == codes.shape[-1] == 50


# -- loading ------------------------------------------------------------------------------

def test_mimi_loads_from_a_weights_file_through_transformers_conversion(tmp_path):
    spec = save_random_checkpoint("mimi?size=tiny&calibration=1", tmp_path / "mimi", seed=0)
    ckpt = spec.split("checkpoint=")[1]
    a = load_codec(spec, "cpu")
    b = load_codec(f"mimi?checkpoint={ckpt}/model.safetensors", "cpu")  # failed with missing keys before
    assert all(torch.equal(x, y) for x, y in zip(a.tables(), b.tables()))
    x = torch.from_numpy(calibration_audio(24000, 0.5, 1))
    assert torch.equal(a.encode(x[None], torch.tensor([len(x)]))[0], b.encode(x[None], torch.tensor([len(x)]))[0])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_checkpoints_load_as_float32(dtype, tmp_path):
    from safetensors.torch import load_file, save_file

    spec = save_random_checkpoint("dac:16khz?size=tiny&calibration=1", tmp_path / "dac", seed=0)
    ckpt = Path(spec.split("checkpoint=")[1])
    state = load_file(str(ckpt / "model.safetensors"))
    save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}, str(ckpt / "model.safetensors"))
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "dtype": str(dtype).split(".")[1]}))
    for s in (spec, f"dac:16khz?checkpoint={ckpt}/model.safetensors"):
        codec = load_codec(s, "cpu")
        assert {p.dtype for p in codec.model.parameters()} == {torch.float32}
        x = torch.from_numpy(calibration_audio(16000, 0.3, 1))
        codes, _ = codec.encode(x[None], torch.tensor([len(x)]))
        assert codec.decode(codes).dtype == torch.float32
        # The weights are the half-precision values, exactly.
        w = codec.model.quantizer.quantizers[0].codebook.weight
        assert torch.equal(w, state["quantizer.quantizers.0.codebook.weight"].to(dtype).float())


def test_a_checkpoint_that_disagrees_with_its_config_is_a_one_line_error(tmp_path):
    spec = save_random_checkpoint("dac:16khz?size=tiny&calibration=1", tmp_path / "dac", seed=0)
    ckpt = Path(spec.split("checkpoint=")[1])
    cfg = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**cfg, "n_codebooks": 14}))
    for s in (spec, f"dac:16khz?checkpoint={ckpt}/model.safetensors"):
        with pytest.raises(CodeclensError) as e:
            load_codec(s, "cpu")
        assert str(ckpt) in str(e.value) and "config.json" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "notes.safetensors").write_text("not a safetensors file")
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CodeclensError, match="notes.safetensors") as e:
        load_codec(f"dac:16khz?checkpoint={tmp_path}/notes.safetensors", "cpu")
    assert "\n" not in str(e.value)


# -- random-init controls -------------------------------------------------------------------

def test_xcodec_random_control_exercises_both_halves(tiny):
    """transformers' init left the acoustic half ~2000x below the semantic half."""
    codec = tiny("xcodec")
    x = torch.from_numpy(calibration_audio(16000, 1.0, 9))[None]
    with torch.no_grad():
        ac, sem = codec.halves(x)
    ratio = float(ac.pow(2).mean().sqrt() / sem.pow(2).mean().sqrt())
    assert 0.1 < ratio < 10, ratio
    y = codec.decode(codec.encode(x, torch.tensor([x.shape[1]]))[0])
    assert 0.1 < float(y.pow(2).mean().sqrt() / x.pow(2).mean().sqrt()) < 10  # decodes at the input's level


def test_mimi_random_control_quantizes_close_to_its_latent(monkeypatch):
    def rel(codec):
        x = torch.from_numpy(calibration_audio(24000, 2.0, 5))[None]
        n = torch.tensor([x.shape[1]])
        z, _ = codec.latent(x, n)
        return float((codec.quantized(codec.encode(x, n)[0]) - z).norm() / z.norm())

    spec = "mimi?size=tiny&layers=8&random_init=1&calibration=4"
    tied = rel(load_codec(spec, "cpu"))
    import codeclens.codecs.mimi as mimi

    monkeypatch.setattr(mimi, "_tie_projections", lambda model: None)  # the control before the fix
    untied = rel(load_codec(spec, "cpu"))
    assert tied < 0.7 < 1.0 < untied, (tied, untied)


# -- frame timing -----------------------------------------------------------------------------

@pytest.mark.parametrize("name, rule, offset_ms, tol_ms", [
    ("encodec24", "causal", 0.0, 0.01),   # causal: frame k sees nothing after (k+1)*hop - 1
    ("mimi", "causal", 0.0, 0.01),
    ("dac16", "support", 0.0, 0.5),       # centred convolutions: symmetric receptive field
    ("dac44", "support", 0.0, 0.5),
])
def test_frame_centre_offsets_measured_by_impulse_response(name, rule, offset_ms, tol_ms, tiny):
    codec = tiny(name)
    m = measure_frame_offset(codec, seconds=3.0)
    assert m.rule == rule
    assert abs(m.offset_s * 1000 - offset_ms) <= tol_ms, m
    assert codec.describe()["frame_offset_s"] == codec.frame_offset == pytest.approx(offset_ms / 1000, abs=1e-12)


def test_xcodec_semantic_half_is_7_5_ms_early(tiny):
    """HuBERT's 400-sample, stride-320 frames on input padded by 160 each side: frame k is
    centred 120 samples before the nominal centre. The released HuBERT's feature encoder
    normalises over time (group norm) so its support is global; the same convolution
    geometry with a per-frame layer norm has a finite support whose midpoint is measured."""
    from codeclens.codecs._hf import hf_class

    HubertConfig, HubertModel = hf_class("HubertConfig"), hf_class("HubertModel")
    codec = tiny("xcodec")
    fe = HubertModel(HubertConfig(feat_extract_norm="layer", conv_dim=[8] * 7, hidden_size=16, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=32)).eval().feature_extractor
    pad = codec.model.pad
    m = measure_frame_offset(codec, seconds=2.0, latent=lambda x: fe(F.pad(pad_to_hop(x, 320), (pad, pad)))[0].T)
    assert m.rule == "support" and m.offset_s == pytest.approx(-0.0075, abs=1e-4), m
    acoustic = measure_frame_offset(codec, seconds=3.0, latent=lambda x: codec.halves(x)[0][0].T)
    assert abs(acoustic.offset_s) < 0.5e-3, acoustic
    d = codec.describe()
    assert d["frame_offset_halves_s"] == {"acoustic": 0.0, "semantic": -0.0075}
    assert d["frame_offset_s"] == pytest.approx(-0.00375)


def test_labels_are_read_at_the_codecs_frame_times(tmp_path, audio_folder):
    """The store's frame times are the codec's own (X-codec: 3.75 ms early)."""
    from codeclens.store import Store

    spec = save_random_checkpoint("xcodec:1kbps?size=tiny&calibration=1", tmp_path / "xc", seed=0)
    out = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", spec, "--out", str(out),
                 "--labels", "none", "--quiet", "--device", "cpu"]) == 0
    st = Store(out)
    t = st.frames["time"].to_numpy()[: int(st.utterances["n_frames"].iloc[0])]
    assert t[0] == pytest.approx(0.01 - 0.00375) and t[1] - t[0] == pytest.approx(0.02)
    assert st.codec["frame_offset_s"] == pytest.approx(-0.00375)
