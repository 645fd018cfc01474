"""The example plug-in codec (examples/toy_codec) through the public plug-in path,
end to end: ``python:toy_codec:ToyCodec`` spec, the contract, save/reload, CLI extract."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.errors import CodeclensError

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPEC = "python:toy_codec:ToyCodec?random_init=1&layers=4&codebook_size=32"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: one intra-op thread beats two fighting over a shared CPU."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def examples_on_path(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))


def _batch(items):
    lengths = torch.tensor([len(x) for x in items])
    waves = torch.zeros(len(items), int(lengths.max()))
    for i, x in enumerate(items):
        waves[i, : len(x)] = x
    return waves, lengths


def test_toy_codec_honours_the_contract(examples_on_path, tmp_path):
    codec = load_codec(SPEC, "cpu")
    assert (codec.sample_rate, codec.frame_rate, codec.n_layers, codec.codebook_sizes) == (16000, 100.0, 4, [32] * 4)
    a = torch.from_numpy(calibration_audio(16000, 0.5, seed=7))[:7777]
    b = torch.from_numpy(calibration_audio(16000, 0.9, seed=8))
    codes, n = codec.encode(*_batch([a, b]))
    assert n.tolist() == [math.ceil(7777 / 160), math.ceil(len(b) / 160)]
    # Sum invariant, for encoded and arbitrary codes.
    rand = torch.randint(0, 32, codes.shape, generator=torch.Generator().manual_seed(0))
    for c in (codes, rand):
        torch.testing.assert_close(codec.lookup(c), codec.quantized(c), rtol=1e-4, atol=1e-6)
    # Padding does not leak, whatever the padding value.
    alone, _ = codec.encode(*_batch([a]))
    waves, lengths = _batch([b, a])
    waves[1, 7777:] = 0.3
    assert torch.equal(codec.encode(waves, lengths)[0][1, :, : n[0]], alone[0])
    # Decoding: more layers reconstruct better; dropped layers contribute nothing.
    x = torch.nn.functional.pad(a, (0, int(n[0]) * 160 - len(a)))
    errs = [float((codec.decode(alone, layers=range(k + 1))[0] - x).norm()) for k in range(4)]
    assert errs == sorted(errs, reverse=True) and errs[-1] < errs[0]
    scrambled = alone.clone()
    scrambled[:, 3] = (scrambled[:, 3] + 5) % 32
    assert torch.equal(codec.decode(scrambled, layers=[0, 1, 2]), codec.decode(alone, layers=[0, 1, 2]))
    # Saved and reloaded through the loader: same codec.
    codec.save(tmp_path / "toy")
    again = load_codec(f"python:toy_codec:ToyCodec?checkpoint={tmp_path / 'toy'}", "cpu")
    assert all(torch.equal(p, q) for p, q in zip(codec.tables(), again.tables()))


def test_toy_codec_extracts_through_the_cli(examples_on_path, audio_folder, tmp_path):
    from codeclens.store import Store

    out = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", SPEC, "--out", str(out),
                 "--labels", "none", "--quiet", "--device", "cpu"]) == 0
    store = Store(out)
    assert store.n_layers == 4 and store.frame_rate == 100.0 and store.codebook_sizes == [32] * 4
    u = store.utterances
    assert len(u) == 6
    np.testing.assert_array_equal(u["n_frames"].to_numpy(), np.ceil(u["duration"].to_numpy() * 100).astype(int))
    assert store.codes.shape == (int(u["n_frames"].sum()), 4)
    assert len(np.unique(store.codes[:, 0])) > 16  # codes are used, not all zero


def test_bad_plugins_are_one_line_errors(examples_on_path, tmp_path, capsys):
    for spec, needle in [
        ("python:no_such_module:X", "cannot import"),
        ("python:toy_codec:Nope", "has no class"),
        ("python:toy_codec", "package.module:Class"),
        ("python:pickle:Pickler", "not a codeclens.codecs.CodecAdapter"),
        ("python:toy_codec:ToyCodec", "checkpoint=DIR or random_init"),
        ("python:toy_codec:ToyCodec?random_init=1&flavour=1", "unknown option"),
    ]:
        with pytest.raises(CodeclensError, match=needle):
            load_codec(spec, "cpu")
    rc = main(["extract", "--corpus", str(tmp_path), "--codec", "python:no_such_module:X", "--out", str(tmp_path / "s")])
    assert rc == 2 and "\n" not in capsys.readouterr().err.strip()


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_torch_pickles_are_loaded_weights_only(tmp_path, capsys):
    from codeclens.codecs._hf import load_state_file

    p = tmp_path / "evil.pt"
    p.write_bytes(pickle.dumps({"w": _Evil()}, protocol=2))
    with pytest.raises(CodeclensError, match="weights-only"):
        load_state_file(p)
    assert "must never run" not in capsys.readouterr().out
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(load_state_file(good)["w"], torch.ones(2))
