"""Resynthesis and conversion through the real CLI: a real melrvq store, decoded by the codec."""

import json

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.store import Store


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread (conftest)


@pytest.fixture(scope="module")
def run(tmp_path_factory, audio_folder, melrvq_dir):
    root = tmp_path_factory.mktemp("attr-resynth")
    store = root / "store"
    assert main(["extract", "--corpus", str(audio_folder), "--codec", f"melrvq?checkpoint={melrvq_dir}", "--out", str(store),
                 "--labels", "f0?resolution=1&hop=0.02&fmin=60&fmax=400,loudness", "--quiet"]) == 0
    out = root / "run"
    assert main(["attributes", "train", "--store", str(store), "--out", str(out), "--attributes", "pitch,loudness,identity",
                 "--steps", "20", "--batch-size", "4", "--window", "16", "--d-model", "16", "--n-heads", "2",
                 "--enc-layers", "1", "--identity-dims", "2", "--identity-bins", "2", "--split", "split_utt",
                 "--device", "cpu", "--quiet"]) == 0
    return Store(store), out


def test_resynthesis_decodes_through_the_codec(run, tmp_path):
    store, ck = run
    out = tmp_path / "rs"
    assert main(["attributes", "resynthesise", "--store", str(store.path), "--checkpoint", str(ck), "--out", str(out),
                 "--n-utts", "1", "--max-seconds", "1.0", "--split", "split_utt", "--device", "cpu"]) == 0
    summ = pd.read_csv(out / "summary.csv").set_index("system")
    assert {"codec decode", "resynthesis", "conversion"} <= set(summ.index)
    # The codec's own decode of the original tokens is the reference point: close to the source audio.
    assert summ.loc["codec decode", "stoi"] > summ.loc["resynthesis", "stoi"] - 1e-9
    assert 0.0 <= summ.loc["resynthesis", "token_acc"] <= 1.0
    assert np.isfinite(summ.loc["conversion", "cos_target"]) and np.isfinite(summ.loc["conversion", "cos_source"])
    (d,) = list((out / "audio").iterdir())
    decoded, sr = sf.read(d / "decode.wav", dtype="float32")
    codec = load_codec(store.codec["spec"], "cpu")
    assert sr == codec.sample_rate
    row = store.utterances[store.utterances["id"].str.replace("/", "_") == d.name].iloc[0]
    codes = np.asarray(store.codes[row["frame_offset"] : row["frame_offset"] + 50], dtype=np.int64).T
    own = codec.decode(torch.from_numpy(codes)[None])[0].numpy()
    assert np.array_equal(decoded, own)  # the reference decode is the codec's own
    assert (d / "resynthesis.wav").is_file() and (d / "conversion.wav").is_file()


def test_convert_to_an_unseen_voice_file(run, tmp_path, audio_folder, capsys):
    store, ck = run
    src = str(store.utterances["id"].iloc[0])
    wav = sorted(audio_folder.glob("spk2/*.wav"))[0]
    out = tmp_path / "vc"
    assert main(["attributes", "convert", "--store", str(store.path), "--checkpoint", str(ck), "--out", str(out),
                 "--source", src, "--target", str(wav), "--max-seconds", "1.0", "--device", "cpu"]) == 0
    res = json.loads((out / "conversion.json").read_text())
    assert -1.0 <= res["cos_target"] <= 1.0 and (out / "conversion.wav").is_file()
    assert main(["attributes", "convert", "--store", str(store.path), "--checkpoint", str(ck), "--out", str(out),
                 "--source", "nobody", "--target", src]) == 2
    capsys.readouterr()
    assert main(["attributes", "convert", "--store", str(store.path), "--checkpoint", str(ck), "--out", str(out),
                 "--source", src, "--target", str(tmp_path / "missing.wav"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "missing.wav: unreadable audio" in err and len(err.strip().splitlines()) == 1
    assert (out / "conversion.wav").is_file()  # the earlier conversion is kept
