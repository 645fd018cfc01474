"""EnCodec 48 kHz stores keep each utterance's per-chunk input scales, and the ablate
engine decodes with them.

Known answer: the model's own ``encode`` -> ``decode`` of the original waveform (transformers'
``EncodecModel``, scales included). The ablate CLI's saved full-layer decode of a stored
utterance must equal it; decoded at unit scale (what stores without scales gave) it does
not. The utterance's chunks differ ~16x in level, and the decode's chunk levels must follow
the input's, which a level-normalised decode cannot.
"""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from codeclens.analyses.ablate import engine as E
from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.codecs.calibration import calibration_audio
from codeclens.codecs.testing import save_random_checkpoint
from codeclens.store import Store

SR = 48000
N = 2 * 47520 + 6000  # three chunks, the last one short
QUIET, LOUD = 0.05, 0.8

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _wave() -> np.ndarray:
    x = calibration_audio(SR, N / SR + 0.01, 3)[:N].astype(np.float64)
    env = np.where(np.arange(N) < 47520, QUIET, LOUD)  # chunk 0 quiet, chunks 1-2 loud
    return (x * env).astype(np.float32)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("scales")
    spec = save_random_checkpoint("encodec:48khz@3kbps?size=tiny", root / "ckpt", seed=0)
    corpus = root / "corpus"
    corpus.mkdir()
    x = _wave()
    sf.write(corpus / "ramp.wav", x, SR, subtype="FLOAT")
    store = root / "store"
    assert main(["extract", "--corpus", str(corpus), "--codec", spec, "--out", str(store), "--labels", "none",
                 "--quiet", "--device", "cpu"]) == 0
    return spec, x, store


def _own_decode(codec, x: np.ndarray) -> np.ndarray:
    """transformers' EncodecModel.encode -> decode of the waveform (stereo copy, channel mean)."""
    w = torch.from_numpy(x)[None, None].expand(-1, 2, -1)
    with torch.no_grad():
        enc = codec.model.encode(w, bandwidth=codec.bandwidth)
        y = codec.model.decode(enc.audio_codes, enc.audio_scales, last_frame_pad_length=enc.last_frame_pad_length)[0]
    return y.mean(1)[0].numpy()


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _chunk_rms(y: np.ndarray) -> tuple[float, float]:
    q, l = y[2000:45000], y[50000:92000]  # inside chunk 0, inside chunk 1 (away from the overlaps)
    return float(np.sqrt(np.mean(q ** 2))), float(np.sqrt(np.mean(l ** 2)))


def test_the_store_keeps_the_models_chunk_scales(made):
    spec, x, store_dir = made
    store = Store(store_dir)
    codec = load_codec(spec, "cpu")
    got = store.scales(0)
    want = codec.scales(torch.from_numpy(x)[None], torch.tensor([N]))[0].numpy()
    assert got.shape == (3,) and np.allclose(got, want, rtol=1e-6)
    assert got[1] / got[0] > 8  # the chunks really differ in level


def test_ablate_full_decode_is_the_models_own_encode_decode(made, tmp_path):
    spec, x, store_dir = made
    out = tmp_path / "ablate"
    assert main(["ablate", "--store", str(store_dir), "--out", str(out), "--interventions", "drop:1",
                 "--measures", "loudness", "--n-utts", "1", "--examples", "1", "--max-seconds", "3.0",
                 "--n-boot", "20", "--quiet"]) == 0
    decoded = list(out.glob("*/audio/*/decode.wav"))
    assert len(decoded) == 1
    y, sr = sf.read(decoded[0], dtype="float32")
    codec = load_codec(spec, "cpu")
    own = _own_decode(codec, x)
    assert sr == SR and _rel(y, own) < 1e-5
    # The chunk levels follow the input's (x16), as the model's own decode does.
    q, l = _chunk_rms(y)
    xq, xl = _chunk_rms(x)
    assert 0.5 < (l / q) / (xl / xq) < 2, (l / q, xl / xq)
    # At unit scale (what the engine gave before the store kept scales): neither holds.
    store = Store(store_dir)
    unit = E.decode_codes(codec, E.utterance_codes(store, 0))
    assert _rel(unit, own) > 0.5
    uq, ul = _chunk_rms(unit)
    assert (ul / uq) / (xl / xq) < 0.5


def test_an_old_store_without_scales_decodes_at_unit_scale_with_one_warning(made, tmp_path):
    import shutil

    spec, _, store_dir = made
    old = tmp_path / "old-store"
    shutil.copytree(store_dir, old)
    (old / "scales.parquet").unlink()
    store = Store(old)
    codec = load_codec(spec, "cpu")
    assert store.scales(0) is None
    E._UNSCALED_WARNED.discard(str(store.path))
    with pytest.warns(UserWarning, match="unit scale"):
        assert E.utterance_scales(store, 0, codec) is None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second utterance of the same store: no second warning
        assert E.utterance_scales(store, 0, codec) is None
    codes = E.utterance_codes(store, 0)
    want = codec.decode(torch.from_numpy(codes)[None])[0].numpy()
    assert np.array_equal(E.decode_codes(codec, codes, None, E.utterance_scales(store, 0, codec)), want)
    # Fingerprints differ with and without the table (caches keyed on them are not shared).
    assert Store(store_dir).fingerprint != store.fingerprint


def test_codecs_without_scales_write_no_table(tmp_path, audio_folder):
    spec = save_random_checkpoint("encodec:24khz@1.5kbps?size=tiny", tmp_path / "ckpt", seed=0)
    out = tmp_path / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", spec, "--out", str(out), "--labels", "none",
                 "--limit", "2", "--quiet", "--device", "cpu"]) == 0
    store = Store(out)
    assert not store.has_scales and store.scales(0) is None
    assert E.utterance_scales(store, 0, load_codec(spec, "cpu")) is None


def test_mean_ablation_decodes_chunked_at_the_stored_scales(made):
    """decode_quantized (mean ablation) on a zero expected vector = decode without that layer."""
    from codeclens.analyses.ablate.interventions import Edited

    spec, _, store_dir = made
    store = Store(store_dir)
    codec = load_codec(spec, "cpu")
    codes = E.utterance_codes(store, 0)
    scales = E.utterance_scales(store, 0, codec)
    zero = [np.zeros(codec.dim, np.float32)] * codec.n_layers
    mean = E.decode_edit(codec, Edited(codes, (0,), (1,)), zero, scales)
    dropped = E.decode_codes(codec, codes, [0], scales)
    assert mean.shape == dropped.shape and _rel(mean, dropped) < 1e-6
    assert _rel(E.decode_codes(codec, codes, [0]), dropped) > 0.5  # the scales mattered


def test_a_store_without_scales_is_rebuilt_not_called_up_to_date(made, tmp_path, capsys):
    """A 48 kHz store from before scales were kept (same configuration, no scales table) is not
    "up to date": extract refuses it without --overwrite and rebuilds it with."""
    import shutil

    spec, _, store_dir = made
    old = tmp_path / "old"
    shutil.copytree(store_dir, old)
    (old / "scales.parquet").unlink()
    corpus = store_dir.parent / "corpus"
    args = ["extract", "--corpus", str(corpus), "--codec", spec, "--out", str(old), "--labels", "none", "--quiet",
            "--device", "cpu"]
    capsys.readouterr()
    assert main(args) == 2
    assert "before chunk scales were kept" in capsys.readouterr().err
    assert not Store(old).has_scales  # refused: nothing touched
    assert main([*args, "--overwrite"]) == 0
    assert Store(old).has_scales and np.allclose(Store(old).scales(0), Store(store_dir).scales(0))
    assert main(args) == 0  # now up to date
