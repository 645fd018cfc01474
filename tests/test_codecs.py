"""The real codec adapters (EnCodec, DAC, Mimi, SpeechTokenizer, X-codec) against the adapter contract.

Every adapter is built small (``size=tiny``) with random weights, SAVED, and RELOADED
through the ordinary loader (``checkpoint=DIR``), exactly as a real checkpoint is; the
reloaded codec is what the contract tests see.
"""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.check import batch_of as _batch
from codeclens.codecs.testing import random_spec, reload_spec, save_random_checkpoint
from codeclens.errors import CodeclensError

# spec, sample rate, frame rate, layers
ADAPTERS = {
    "encodec24": ("encodec:24khz@6kbps?size=tiny", 24000, 75.0, 8),
    "encodec48": ("encodec:48khz@3kbps?size=tiny", 48000, 150.0, 2),
    "dac16": ("dac:16khz?size=tiny", 16000, 50.0, 12),
    "mimi": ("mimi?size=tiny&layers=6", 24000, 12.5, 6),
    "speechtokenizer": ("speechtokenizer?size=tiny", 16000, 50.0, 8),
    "xcodec": ("xcodec:2kbps?size=tiny", 16000, 50.0, 4),
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="session")
def saved(tmp_path_factory):
    """name -> (random codec as built, spec that reloads its saved checkpoint); built lazily."""
    cache: dict[str, tuple] = {}

    def get(name: str):
        if name not in cache:
            spec = ADAPTERS[name][0]
            built = load_codec(random_spec(spec, seed=0), "cpu")
            out = tmp_path_factory.mktemp(f"ckpt-{name}")
            built.save(out)
            cache[name] = (built, reload_spec(spec, out))
        return cache[name]

    return get


@pytest.fixture(scope="session")
def reloaded(saved):
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_codec(saved(name)[1], "cpu")
        return cache[name]

    return get


def _speech(sr: int, seconds: float, seed: int) -> torch.Tensor:
    return torch.from_numpy(calibration_audio(sr, seconds, seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_reload_gives_the_same_codec(name, saved, reloaded):
    built, spec = saved(name)
    codec = reloaded(name)
    _, sr, fr, n_layers = ADAPTERS[name]
    assert "checkpoint=" in spec and "random_init" not in spec
    assert (codec.sample_rate, codec.frame_rate, codec.n_layers) == (sr, fr, n_layers)
    assert len(codec.tables()) == n_layers == len(codec.codebook_sizes)
    for a, b in zip(built.tables(), codec.tables()):
        assert a.shape == b.shape and torch.equal(a, b)
    x = _speech(sr, 0.5, seed=3)
    waves, lengths = _batch([x])
    assert torch.equal(built.encode(waves, lengths)[0], codec.encode(waves, lengths)[0])


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_sum_of_table_rows_is_the_codecs_quantized_representation(name, reloaded):
    codec = reloaded(name)
    _, sr, _, n_layers = ADAPTERS[name]
    waves, lengths = _batch([_speech(sr, 0.6, seed=4), _speech(sr, 0.3, seed=5)])
    codes, n = codec.encode(waves, lengths)
    # Encoded codes and arbitrary codes alike: the identity must hold for every index.
    g = torch.Generator().manual_seed(0)
    arbitrary = torch.stack([torch.randint(0, k, (2, codes.shape[2]), generator=g) for k in codec.codebook_sizes], 1)
    for c in (codes, arbitrary):
        own = codec.quantized(c)
        assert own.shape == (2, c.shape[2], codec.dim)
        assert own.abs().max() > 0
        assert _rel(codec.lookup(c), own) < 1e-4
        subset = [0, n_layers - 1]
        assert _rel(codec.lookup(c, subset), codec.quantized(c, subset)) < 1e-4


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_decode_matches_the_models_own_decode_and_dropped_layers_contribute_nothing(name, reloaded):
    codec = reloaded(name)
    _, sr, _, n_layers = ADAPTERS[name]
    waves, lengths = _batch([_speech(sr, 0.5, seed=6), _speech(sr, 0.4, seed=7)])
    codes, _ = codec.encode(waves, lengths)
    full = codec.decode(codes)
    ref = codec.reference_decode(codes)
    assert full.shape == ref.shape and full.shape[0] == 2
    assert _rel(full, ref) < 1e-4
    keep = list(range(1, n_layers))
    dropped = codec.decode(codes, layers=keep)
    assert float((dropped - full).norm() / full.norm()) > 1e-6  # layer 1 mattered
    # Dropped layers contribute nothing: their codes can be anything.
    scrambled = codes.clone()
    scrambled[:, 0] = (codes[:, 0] + 1) % codec.codebook_sizes[0]
    assert torch.allclose(codec.decode(scrambled, layers=keep), dropped, rtol=1e-5, atol=1e-6)
    assert torch.equal(codec.decode(codes, layers=list(range(n_layers))), full)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_codes_do_not_depend_on_the_batch(name, reloaded):
    codec = reloaded(name)
    _, sr, fr, _ = ADAPTERS[name]
    hop = round(sr / fr)
    short = _speech(sr, 0.37, seed=8)[: int(0.37 * sr) + 11]  # not a whole number of frames
    long = _speech(sr, 0.9, seed=9)
    alone, n_alone = codec.encode(*_batch([short]))
    waves, lengths = _batch([long, short])
    both, n_both = codec.encode(waves, lengths)
    want = math.ceil(len(short) / hop)
    assert int(n_alone[0]) == int(n_both[1]) == want
    assert int(n_both[0]) == math.ceil(len(long) / hop)
    assert torch.equal(alone[0, :, :want], both[1, :, :want])
    # Padding past the valid length changes nothing either (other padding values).
    waves2 = waves.clone()
    waves2[1, len(short):] = 0.5
    assert torch.equal(codec.encode(waves2, lengths)[0][1, :, :want], alone[0, :, :want])


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_random_init_spreads_codes_over_the_codebook(name, reloaded):
    codec = reloaded(name)
    _, sr, fr, n_layers = ADAPTERS[name]
    # Held-out speech-like audio (not the calibration signal the codebooks came from).
    x = _speech(sr, 4.0, seed=123)
    codes, n = codec.encode(*_batch([x]))
    t = int(n[0])
    for l in range(n_layers):
        used = len(torch.unique(codes[0, l, :t]))
        assert used >= 0.3 * min(t, codec.codebook_sizes[l]), (l, used, t)


def test_random_init_is_deterministic_for_a_seed(saved):
    built, _ = saved("encodec24")
    spec = "encodec:24khz@6kbps?random_init=1&size=tiny"
    again = load_codec(spec, "cpu")  # seed defaults to 0, as the fixture used
    other = load_codec(spec + "&seed=1", "cpu")
    assert all(torch.equal(a, b) for a, b in zip(built.tables(), again.tables()))
    assert not torch.equal(built.tables()[0], other.tables()[0])


def test_latent_is_the_pre_quantization_encoder_output(reloaded):
    codec = reloaded("encodec24")
    waves, lengths = _batch([_speech(24000, 0.5, seed=10), _speech(24000, 0.2, seed=11)])
    z, n = codec.latent(waves, lengths)
    codes, n2 = codec.encode(waves, lengths)
    assert torch.equal(n, n2) and z.shape[:2] == (codes.shape[0], codes.shape[2])
    # Quantizing the latent with the first layer's table picks the encoded first-layer code.
    t = int(n[0])
    nearest = torch.cdist(z[0, :t], codec.tables()[0]).argmin(1)
    assert torch.equal(nearest, codes[0, 0, :t])


def test_codes_are_the_models_own_encode(reloaded):
    """Where the reference API encodes an utterance the same way (one chunk, no batch
    padding), the adapter's codes are exactly its codes."""
    x = _speech(24000, 0.7, seed=12)
    enc = reloaded("encodec24")
    ref = enc.model.encode(x[None, None], bandwidth=6.0).audio_codes[0, 0]
    assert torch.equal(enc.encode(*_batch([x]))[0][0], ref)
    st = reloaded("speechtokenizer")
    y = _speech(16000, 0.7, seed=13)[:11200]  # whole hops: the package pads nothing either
    assert torch.equal(st.encode(*_batch([y]))[0][0], st.model.encode(y[None, None])[:, 0])
    dac = reloaded("dac16")
    assert torch.equal(dac.encode(*_batch([y]))[0][0], dac.model.encode(y[None, None]).audio_codes[0])


@pytest.mark.parametrize("name", ["encodec24", "dac16"])
def test_extract_through_the_cli(name, saved, reloaded, audio_folder, tmp_path):
    from codeclens.audio import load_audio
    from codeclens.store import Store

    spec = saved(name)[1]
    out = tmp_path / "store"
    rc = main(["extract", "--corpus", str(audio_folder), "--codec", spec, "--out", str(out),
               "--labels", "none", "--quiet", "--device", "cpu"])
    assert rc == 0
    store = Store(out)
    codec = reloaded(name)
    assert store.n_layers == codec.n_layers and store.frame_rate == codec.frame_rate
    utts = store.utterances
    assert len(utts) == 6  # the corrupt file is skipped, not fatal
    hop = codec.samples_per_frame()
    for _, u in utts.iterrows():
        audio, _ = load_audio(u["path"], codec.sample_rate)
        assert u["n_frames"] == math.ceil(len(audio) / hop)
        want, _ = codec.encode(*_batch([torch.from_numpy(audio)]))
        got = store.codes[u["frame_offset"]: u["frame_offset"] + u["n_frames"]]
        np.testing.assert_array_equal(got, want[0].T.numpy())
    for a, b in zip(store.tables, codec.tables()):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)


def test_weights_file_with_config_beside_it_loads(saved, tmp_path):
    _, spec = saved("dac16")
    ckpt = spec.split("checkpoint=")[1]
    file_spec = f"dac:16khz?checkpoint={ckpt}/model.safetensors"
    a, b = load_codec(spec, "cpu"), load_codec(file_spec, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.tables(), b.tables()))


def test_speechtokenizer_loads_a_torch_pickle_without_its_trainer(saved, tmp_path):
    import json
    import shutil

    from safetensors.torch import load_file

    built, spec = saved("speechtokenizer")
    ckpt = spec.split("checkpoint=")[1]
    d = tmp_path / "released-layout"
    d.mkdir()
    torch.save(load_file(f"{ckpt}/speechtokenizer.safetensors"), d / "SpeechTokenizer.pt")
    shutil.copy(f"{ckpt}/config.json", d / "my_config.json")
    codec = load_codec(f"speechtokenizer?checkpoint={d}/SpeechTokenizer.pt&config={d}/my_config.json", "cpu")
    assert all(torch.equal(x, y) for x, y in zip(built.tables(), codec.tables()))
    assert "speechtokenizer.trainer" not in sys.modules
    assert json.loads((d / "my_config.json").read_text())["n_q"] == 8
    # Weights of another size of the architecture: a one-line error, not a traceback.
    cfg = json.loads((d / "my_config.json").read_text())
    (d / "wider.json").write_text(json.dumps({**cfg, "dimension": 48, "semantic_dimension": 48}))
    with pytest.raises(CodeclensError, match="does not match the architecture"):
        load_codec(f"speechtokenizer?checkpoint={d}/SpeechTokenizer.pt&config={d}/wider.json", "cpu")
    # Not a state dict: a one-line error (weights-only pickles: see test_plugin.py).
    (d / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(CodeclensError, match="weights-only"):
        load_codec(f"speechtokenizer?checkpoint={d}/bad.pt&config={d}/my_config.json", "cpu")


@pytest.mark.parametrize(
    "spec, needle",
    [
        ("encodec:24khz@6kbps", "checkpoint="),  # default hub id, offline in tests
        ("dac:16khz", "checkpoint="),
        ("mimi", "checkpoint="),
        ("speechtokenizer", "checkpoint="),
        ("xcodec", "checkpoint="),
        ("xcodec:3kbps?random_init=1&size=tiny", "bandwidth"),
        ("encodec:32khz@6kbps", "bad target"),
        ("encodec:24khz@5kbps", "bandwidth"),
        ("dac:8khz", "unknown variant"),
        ("encodec:24khz@6kbps?random_init=1&size=huge", "size"),
        ("mimi?random_init=1&size=tiny&layers=0", "layers=0"),
        ("encodec:24khz@6kbps?random_init=1&size=tiny&seed=-1", "seed must be >= 0"),
        ("melrvq?random_init=1&seed=x", "not a valid int"),
        ("dac:16khz?checkpoint=/no/such/dir", "not found"),
        ("encodec:24khz@6kbps?colour=red", "unknown option"),
    ],
)
def test_bad_specs_are_one_line_errors(spec, needle):
    with pytest.raises(CodeclensError) as e:
        load_codec(spec, "cpu")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_of_another_model_is_refused(saved):
    ckpt = saved("encodec24")[1].split("checkpoint=")[1]
    with pytest.raises(CodeclensError, match="holds a 'encodec' model"):
        load_codec(f"mimi?checkpoint={ckpt}", "cpu")
    with pytest.raises(CodeclensError, match="24000 Hz model"):
        load_codec(f"encodec:48khz@6kbps?checkpoint={ckpt}", "cpu")


def test_codec_cli(tmp_path, capsys):
    assert main(["codec", "list"]) == 0
    listed = capsys.readouterr().out
    for kind in ("encodec", "dac", "mimi", "speechtokenizer", "xcodec", "melrvq", "python:"):
        assert kind in listed
    out = tmp_path / "toy-encodec"
    assert main(["codec", "save-random", "--codec", "encodec:24khz@1.5kbps?size=tiny", "--out", str(out), "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    spec = f"encodec:24khz@1.5kbps?checkpoint={out}"
    assert spec in printed
    assert main(["codec", "info", spec, "--json"]) == 0
    import json

    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 2 and info["frame_rate"] == 75.0 and info["hop_samples"] == 320
    assert main(["codec", "info", "dac:16khz?checkpoint=/no/such/dir"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "\n" not in err
    # save-random is what save_random_checkpoint does; the same seed gives the same tables.
    spec2 = save_random_checkpoint("encodec:24khz@1.5kbps?size=tiny", tmp_path / "again", seed=2)
    a, b = load_codec(spec, "cpu"), load_codec(spec2, "cpu")
    assert all(torch.equal(x, y) for x, y in zip(a.tables(), b.tables()))
