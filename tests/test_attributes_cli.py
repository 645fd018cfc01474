"""Attribute model through the real CLI on stores with known answers.

``toy_store``: two codec layers, the first a code per phone, the second a quantized F0
(code 0 = unvoiced, code k = one of 16 pitch levels), so the analysis has a known answer:
pitch and content are read from the tokens far better than their baselines.
"""

import json

import numpy as np
import pandas as pd
import pytest

from codeclens.cli import main
from codeclens.store import Store
from codeclens.store.arrays import write_store

LEVELS = 80.0 + 20.0 * np.arange(8)  # F0 levels of codes 1..8 (Hz)
FAST = ["--steps", "150", "--batch-size", "16", "--lr", "1e-2", "--window", "32", "--d-model", "32",
        "--n-heads", "2", "--enc-layers", "1", "--pitch-step-hz", "10", "--checkpoint-every", "50", "--threads", "1",
        "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # one torch thread (conftest)


def toy_store(path, n_utt=80, seed=0, labels=True, codebook=16):
    rng = np.random.default_rng(seed)
    n_fr = rng.integers(40, 70, size=n_utt)
    N = int(n_fr.sum())
    phone = np.empty(N, np.int64)
    level = np.empty(N, np.int64)
    a = 0
    while a < N:
        ln = int(rng.integers(3, 9))
        phone[a : a + ln] = rng.integers(6)
        level[a : a + ln] = rng.integers(1, len(LEVELS) + 1)
        a += ln
    voiced = phone % 3 != 0
    f0 = np.where(voiced, LEVELS[level - 1], np.nan)
    codes = np.stack([phone * 2 + rng.integers(0, 2, size=N), np.where(voiced, level, 0)], 1)
    tables = [rng.normal(size=(codebook, 8)).astype(np.float32) for _ in range(2)]
    spk = np.arange(n_utt) % 8
    utts = pd.DataFrame({"id": [f"u{i:03d}" for i in range(n_utt)], "speaker": [f"s{s}" for s in spk], "n_frames": n_fr})
    fr = pd.DataFrame({"phone": [f"p{p}" for p in phone], "f0_hz": f0, "voiced": voiced,
                       "loudness": np.where(voiced, -20.0, -50.0)}) if labels else None
    return write_store(path, codes, tables, utts, fr, codec_spec=f"toy?codebook={codebook}", seed=seed)


ATTRS = "pitch,loudness"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("attr")
    store = toy_store(root / "store")
    run = root / "run"
    rc = main(["attributes", "train", "--store", str(store), "--out", str(run), "--attributes", ATTRS, *FAST, "--quiet"])
    assert rc == 0
    return store, run


def _analyse(store, run, out):
    assert main(["attributes", "analyse", "--store", str(store), "--checkpoint", str(run), "--out", str(out),
                 "--device", "cpu"]) == 0
    return pd.read_csv(out / "analysis.csv").set_index(["attribute", "unit"])


def test_pitch_read_from_a_quantized_f0_layer_beats_the_baseline(trained, tmp_path):
    store, run = trained
    t = _analyse(store, run, tmp_path / "an")
    pitch = t.loc[("pitch", "Hz")]
    # Layer 2 is the quantized F0: the model's error is a small fraction of the mean-F0 baseline's.
    assert pitch["baseline"] > 25.0
    assert pitch["model"] < 0.2 * pitch["baseline"], pitch.to_dict()
    assert t.loc[("pitch", "fraction"), "model"] > 0.95  # voicing: code 0 of layer 2
    loud = t.loc[("loudness", "dB")]
    assert loud["model"] < 0.5 * loud["baseline"]
    assert (tmp_path / "an" / "config.json").is_file() and (tmp_path / "an" / "provenance.json").is_file()
    ck = json.loads((run / "checkpoint" / "checkpoint.json").read_text())
    assert ck["step"] == 150 and ck["codec"]["spec"] == "toy?codebook=16"


def test_content_read_from_a_phone_layer_beats_the_majority(tmp_path):
    store = toy_store(tmp_path / "store", n_utt=60, seed=1)
    run = tmp_path / "run"
    assert main(["attributes", "train", "--store", str(store), "--out", str(run), "--attributes", "content", *FAST,
                 "--quiet"]) == 0
    content = _analyse(store, run, tmp_path / "an").loc[("content", "fraction")]
    assert content["model"] > 0.8 and content["model"] > content["baseline"] + 0.4, content.to_dict()


def test_rerun_resumes_and_more_steps_continue(trained, capsys):
    store, run = trained
    before = (run / "checkpoint" / "model.safetensors").read_bytes()
    assert main(["attributes", "train", "--store", str(store), "--out", str(run), "--attributes", ATTRS,
                 *FAST, "--quiet"]) == 0
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == before  # nothing left to train
    assert "150 steps" in capsys.readouterr().out
    # Other settings in the same run directory: a one-line error, the checkpoint kept.
    assert main(["attributes", "train", "--store", str(store), "--out", str(run), "--attributes", "pitch",
                 *FAST, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codeclens: error:") and "other settings" in err and len(err.strip().splitlines()) == 1
    assert (run / "checkpoint" / "model.safetensors").read_bytes() == before


def test_bad_inputs_are_one_line_errors(trained, tmp_path, capsys):
    store, run = trained
    bare = toy_store(tmp_path / "bare", n_utt=10, labels=False)
    assert main(["attributes", "train", "--store", str(bare), "--out", str(tmp_path / "r"), *FAST, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codeclens: error:") and "content stream needs" in err and len(err.strip().splitlines()) == 1
    assert main(["attributes", "train", "--store", str(bare), "--out", str(tmp_path / "r"), "--attributes", "pitch",
                 *FAST, "--quiet"]) == 2
    assert "needs the 'f0_hz' label" in capsys.readouterr().err
    other = toy_store(tmp_path / "other", n_utt=10, codebook=32)
    assert main(["attributes", "analyse", "--store", str(other), "--checkpoint", str(run), "--out", str(tmp_path / "o"),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trained on codec 'toy?codebook=16'" in err and len(err.strip().splitlines()) == 1
    assert main(["attributes", "analyse", "--store", str(store), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not an attribute-model checkpoint" in capsys.readouterr().err


def test_study_accepts_attributes_analysis(tmp_path):
    from codeclens.analyses import ANALYSES
    from codeclens.study import StudyError, load_study

    assert "attributes" in ANALYSES
    body = ('[study]\nname = "t"\n[corpora.c]\nspec = "synthetic?n=2"\n[codecs.m]\nspec = "melrvq?random_init=1"\n'
            '[analyses.attributes]\nsteps = 10\nattributes = ["content", "pitch"]\nn_utts = 0\n')
    f = tmp_path / "s.toml"
    f.write_text(body)
    study = load_study(f)
    (a,) = [a for a in study.analyses if a.kind == "attributes"]
    assert a.config.steps == 10 and a.config.attributes == ("content", "pitch")
    f.write_text(body + "colour = 1\n")
    with pytest.raises(StudyError, match="unknown option"):
        load_study(f)


def test_analysis_writes_table1_with_published_rows_and_context(trained, tmp_path):
    from codeclens.analyses.attributes import AttributesAnalysis, AttributesConfig
    from codeclens.analyses.base import AnalysisResult

    store, run = trained
    cfg = AttributesConfig(attributes=("pitch", "loudness"), steps=2, batch_size=2, window=16, d_model=16, n_heads=2,
                           enc_layers=1, n_utts=0, device="cpu")
    out = tmp_path / "a"
    res = AttributesAnalysis()([Store(store)], cfg, out, progress=False)
    assert AnalysisResult.load(out).analysis == "attributes" and res.published[0].path == "table1.csv"
    t = pd.read_csv(out / "table1.csv")
    pub = t[t["source"] != "ours"].set_index("system")
    assert pub.loc["AnCoGen - SpeechTokenizer", "vc_cos"] == 0.74 and pub.loc["AnCoGen - BigCodec", "pitch_aae"] == 7.04
    ours = t[t["source"] == "ours"].iloc[0]
    assert ours["compare_with"].startswith("context") and np.isfinite(ours["pitch_aae"])
    # Every Table 1 column; published values beside ours only where the setup matches (here: none).
    assert {"resynth_nmos", "resynth_bak", "resynth_bertscore", "vc_nmos"} <= set(t.columns)
    assert pub.loc["AnCoGen - BigCodec", "resynth_bertscore"] == 0.82 and np.isnan(ours["resynth_nmos"])
    assert np.isnan(ours["pitch_aae_published"]) and pub["compare_with"].str.startswith("context").all()
    for a in res.artifacts:
        assert (out / a.path).is_file()
    assert (out / "config.json").is_file() and (out / "provenance.json").is_file()


def test_published_rows_match_only_the_same_setup():
    from codeclens.analyses.attributes.published import matching_model

    ls = "librispeech:data/LibriSpeech/test-clean"
    assert matching_model("speechtokenizer", ls, "unit") == "ancogen_speechtokenizer"
    assert matching_model("speechtokenizer?random_init=1&size=tiny", ls, "unit") is None
    assert matching_model("speechtokenizer", ls, "phone") is None  # the paper's content is HuBERT units
    assert matching_model("speechtokenizer", "synthetic?n=96", "unit") is None
    assert matching_model("encodec:24khz@6kbps", ls, "unit") is None


def test_table1_sets_published_values_beside_a_matching_setup():
    from codeclens.analyses.attributes.published import table1

    ls = "librispeech:data/LibriSpeech/test-clean"
    t = table1([{"store": "st", "codec": "speechtokenizer", "corpus": ls, "content_source": "unit", "pitch_aae": 9.0},
                {"store": "mel", "codec": "melrvq", "corpus": ls, "content_source": "unit", "pitch_aae": 5.0}])
    ours = t[t["source"] == "ours"].set_index("system")
    assert ours.loc["st (codeclens)", "compare_with"] == "AnCoGen - SpeechTokenizer"
    assert ours.loc["st (codeclens)", "pitch_aae_published"] == 6.48 and ours.loc["st (codeclens)", "vc_cos_published"] == 0.74
    assert np.isnan(ours.loc["mel (codeclens)", "pitch_aae_published"])
    pub = t[t["source"] != "ours"].set_index("system")
    assert pub.loc["AnCoGen - SpeechTokenizer", "compare_with"] == "st (codeclens)"
    assert pub.loc["AnCoGen - BigCodec", "compare_with"].startswith("context")


def test_damaged_checkpoint_and_convert_without_identity_are_one_line_errors(trained, tmp_path, capsys):
    import shutil

    store, run = trained
    bad = tmp_path / "bad"
    shutil.copytree(run / "checkpoint", bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    args = ["--store", str(store), "--out", str(tmp_path / "o"), "--device", "cpu"]
    assert main(["attributes", "analyse", "--checkpoint", str(bad), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codeclens: error:") and "not an attribute-model checkpoint" in err
    assert len(err.strip().splitlines()) == 1
    # Weights of another network than checkpoint.json describes.
    shutil.copy(run / "checkpoint" / "model.safetensors", bad / "model.safetensors")
    meta = json.loads((bad / "checkpoint.json").read_text())
    meta["model"]["d_model"] = 48
    (bad / "checkpoint.json").write_text(json.dumps(meta))
    assert main(["attributes", "analyse", "--checkpoint", str(bad), *args]) == 2
    err = capsys.readouterr().err
    assert "not an attribute-model checkpoint (RuntimeError" in err and len(err.strip().splitlines()) == 1
    # The trained model has no identity stream: convert says so, in one line.
    assert main(["attributes", "convert", "--checkpoint", str(run), *args, "--source", "u000", "--target", "u001"]) == 2
    err = capsys.readouterr().err
    assert "no identity stream" in err and len(err.strip().splitlines()) == 1


def test_identity_without_audio_or_codec_is_a_one_line_error(tmp_path, capsys):
    store = toy_store(tmp_path / "store", n_utt=10)
    assert main(["attributes", "train", "--store", str(store), "--out", str(tmp_path / "r"), "--attributes",
                 "pitch,identity", *FAST, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("codeclens: error:") and "identity stream needs audio" in err
    assert len(err.strip().splitlines()) == 1
