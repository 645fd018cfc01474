"""melrvq: the adapter contract invariants on a fitted checkpoint reloaded from disk."""

import numpy as np
import pytest
import torch

from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.errors import CodeclensError


@pytest.fixture(scope="module")
def codec(melrvq_dir):
    return load_codec(f"melrvq?checkpoint={melrvq_dir}", "cpu")


def _batch(*audios):
    lengths = torch.tensor([len(a) for a in audios])
    w = torch.zeros(len(audios), int(lengths.max()))
    for i, a in enumerate(audios):
        w[i, : len(a)] = torch.from_numpy(a)
    return w, lengths


def test_contract(codec):
    assert (codec.sample_rate, codec.frame_rate, codec.n_layers) == (16000, 50.0, 4)
    a = calibration_audio(16000, 0.7, seed=5)
    codes, n = codec.encode(*_batch(a))
    assert codes.shape == (1, 4, 35) and int(n[0]) == 35  # ceil(11200 / 320)
    own = codec.quantized(codes)
    via_tables = codec.lookup(codes)
    torch.testing.assert_close(via_tables, own, rtol=1e-4, atol=1e-5)
    # Codes are used: every layer picks several different codes.
    assert all(len(torch.unique(codes[0, l])) > 3 for l in range(4))


def test_decode_layers(codec):
    a = calibration_audio(16000, 0.5, seed=1)
    codes, _ = codec.encode(*_batch(a))
    full = codec.decode(codes)
    again = codec.decode(codes, layers=[0, 1, 2, 3])
    assert torch.equal(full, again)
    dropped = codec.decode(codes, layers=[0, 1, 2])
    assert full.shape == dropped.shape == (1, 25 * 320)
    assert not torch.allclose(full, dropped)
    # The dropped layer contributes nothing: the representation is the sum of the others.
    torch.testing.assert_close(codec.quantized(codes, [0, 1, 2]), codec.lookup(codes, [0, 1, 2]))


def test_padding_does_not_leak(codec):
    short, long = calibration_audio(16000, 0.4, seed=2), calibration_audio(16000, 1.1, seed=3)
    alone, n_alone = codec.encode(*_batch(short))
    batched, n_b = codec.encode(*_batch(long, short))
    assert int(n_b[1]) == int(n_alone[0])
    assert torch.equal(batched[1, :, : n_b[1]], alone[0, :, : n_alone[0]])


def test_reconstruction_improves_with_layers(codec):
    a = calibration_audio(16000, 1.0, seed=7)
    w, n = _batch(a)
    x, _ = codec.latent(w, n)
    codes, _ = codec.encode(w, n)
    errs = [float(((codec.quantized(codes, range(k)) - x) ** 2).mean()) for k in range(1, 5)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs


def test_errors(tmp_path):
    with pytest.raises(CodeclensError, match="checkpoint"):
        load_codec("melrvq", "cpu")
    with pytest.raises(CodeclensError, match="not found"):
        load_codec(f"melrvq?checkpoint={tmp_path}", "cpu")
    with pytest.raises(CodeclensError, match="unknown option"):
        load_codec("melrvq?random_init=1&bogus=2", "cpu")
    with pytest.raises(CodeclensError, match="unknown codec"):
        load_codec("nosuchcodec", "cpu")
    with pytest.raises(CodeclensError, match="n_layers must be >= 1"):
        load_codec("melrvq?random_init=1&layers=0", "cpu")
    c = load_codec("melrvq?random_init=1&layers=3&codebook_size=16", "cpu")
    assert c.n_layers == 3 and c.codebook_sizes == [16] * 3
    # A damaged checkpoint is a one-line error, not a traceback.
    c.save(tmp_path / "ck")
    (tmp_path / "ck" / "melrvq.json").write_text('{"n_mels": ')
    with pytest.raises(CodeclensError, match="damaged") as e:
        load_codec(f"melrvq?checkpoint={tmp_path / 'ck'}", "cpu")
    assert "\n" not in str(e.value)
    c.save(tmp_path / "ck")
    (tmp_path / "ck" / "melrvq.safetensors").write_bytes(b"junk")
    with pytest.raises(CodeclensError, match="damaged"):
        load_codec(f"melrvq?checkpoint={tmp_path / 'ck'}", "cpu")


def test_frames_sit_at_store_frame_times(codec):
    """Frame t covers [t*hop, (t+1)*hop): the span the store labels frame t with.
    A click at sample s must peak in frame s // hop (a centred STFT peaks half a frame early)."""
    for s in (1000, 1200, 1279, 1281, 5000, 7999):
        a = np.zeros(8000, np.float32)
        a[s] = 1.0
        x, n = codec.latent(*_batch(a))
        assert int(n[0]) == 25
        assert int(x[0].sum(1).argmax()) == s // 320, s


def test_decode_keeps_time(codec):
    """A noise burst comes back where it was (not shifted by the framing)."""
    rng = np.random.default_rng(0)
    for a0 in (6000, 8160):
        a = np.zeros(16000, np.float32)
        a[a0 : a0 + 320] = 0.5 * rng.standard_normal(320)
        codes, _ = codec.encode(*_batch(a))
        y = codec.decode(codes)[0].numpy()
        env = np.convolve(y.astype(np.float64) ** 2, np.ones(320), "same")
        assert abs(int(env.argmax()) - (a0 + 160)) <= 80, (a0, int(env.argmax()))
