"""ablate end to end: a real melrvq store, the real CLI, decoded audio checked against the codec."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from codeclens.cli import main
from codeclens.codecs import load_codec
from codeclens.store import Store


# Small models on a shared 2-core machine run far faster without intra-op threads.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory, audio_folder, melrvq_dir):
    out = tmp_path_factory.mktemp("ablate") / "store"
    rc = main(["extract", "--corpus", str(audio_folder), "--codec", f"melrvq?checkpoint={melrvq_dir}",
               "--out", str(out), "--labels", "none", "--quiet"])
    assert rc == 0
    return out


# Few edits: melrvq's Griffin-Lim decode is the slow part (seconds per decode on a busy CPU).
ARGS = ["--interventions", "drop,swap:4", "--layers", "1,4", "--examples", "1",
        "--measures", "speaker,pitch,stoi,mcd,loudness,phone", "--max-seconds", "1.0", "--n-boot", "100", "--quiet"]


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ablate-out")
    assert main(["ablate", "--store", str(store), "--out", str(out), "--n-utts", "2", *ARGS]) == 0
    return out


def test_outputs_and_contract(run):
    res = json.loads((run / "result.json").read_text())
    assert res["analysis"] == "ablate"
    kinds = {a["kind"] for a in res["artifacts"]}
    assert kinds == {"table", "figure", "audio"}
    for a in res["artifacts"]:
        assert (run / a["path"]).is_file(), a["path"]
    eff = pd.read_csv(run / "store" / "effects.csv")
    names = set(eff["intervention"])
    assert names == {"none", "codec (original vs decode)", "other speaker", "drop 1", "drop 4", "swap 4"}
    assert {"spk_sim", "f0_rmse_cents", "voicing_agree", "stoi", "mcd_db", "loudness_db", "spk_sim_donor"} <= set(eff["measure"])
    ci = eff.dropna(subset=["ci_lo"])
    assert (ci["ci_lo"] <= ci["mean"] + 1e-12).all() and (ci["mean"] <= ci["ci_hi"] + 1e-12).all()
    # An interval needs two speakers (the bootstrap resamples speakers): none from one.
    assert eff.loc[eff["n_clusters"] < 2, "ci_lo"].isna().all()
    assert {"n_undefined", "undefined_rate", "diff", "diff_lo", "p", "p_holm"} <= set(eff.columns)
    none = eff[eff["intervention"] == "none"].set_index("measure")["mean"]
    assert none["spk_sim"] == pytest.approx(1.0, abs=1e-5) and none["stoi"] == pytest.approx(1.0)
    assert none["mcd_db"] == 0.0 and none["f0_rmse_cents"] == 0.0
    # Dropping the first (coarsest) layer of a residual quantizer does far more harm than dropping the last.
    drop = eff[eff["kind"] == "drop"].set_index(["layer", "measure"])["mean"]
    assert drop[(1, "mcd_db")] > drop[(4, "mcd_db")] and drop[(1, "stoi")] < drop[(4, "stoi")]
    assert (run / "store" / "layer_roles.csv").is_file() and (run / "store" / "voice_conversion.csv").is_file()
    assert "no phone labels" in res["summary"]
    per = pd.read_csv(run / "store" / "per_utterance.csv")
    sw = per[per["kind"] == "swap"]
    assert (sw["donor_align"] == "dtw").all() and sw["donor_repeat_frac"].between(0, 1).all()


def test_unedited_decode_is_the_codecs_own_decode_exactly(run, store):
    s = Store(store)
    codec = load_codec(s.codec["spec"], "cpu")
    (utt_dir,) = [p for p in (run / "store" / "audio").iterdir()]
    row = s.utterances[s.utterances["id"].str.replace("/", "_") == utt_dir.name].iloc[0]
    audio, sr = sf.read(row["path"], dtype="float32")
    codes, n = codec.encode(torch.from_numpy(audio)[None], torch.tensor([len(audio)]))
    own = codec.decode(codes[:, :, :50])[0].numpy()  # --max-seconds 1.0 at 50 Hz
    saved, sr2 = sf.read(utt_dir / "decode.wav", dtype="float32")
    assert sr2 == codec.sample_rate
    assert np.array_equal(saved, own)
    # And an edit is not: dropping layer 4 changes the audio.
    assert not np.array_equal(sf.read(utt_dir / "drop_4.wav", dtype="float32")[0], own)


def test_swaps_use_another_speaker(run):
    per = pd.read_csv(run / "store" / "per_utterance.csv")
    sw = per[per["kind"] == "swap"]
    assert len(sw) == 2 and sw["donor_other_speaker"].all()
    assert (sw["speaker"] != sw["donor_id"].str.split("/").str[0]).all()


def test_rerun_resumes_without_recomputing(run, store):
    cache = sorted((run / "store" / "cache").glob("*.json"))
    assert len(cache) == 2
    stamp = {p: p.stat().st_mtime_ns for p in cache}
    before = pd.read_csv(run / "store" / "per_utterance.csv")
    # Audio an earlier run with other options left behind is not this run's example.
    (utt_dir,) = list((run / "store" / "audio").iterdir())
    (utt_dir / "noise_3.wav").write_bytes((utt_dir / "decode.wav").read_bytes())
    (run / "store" / "audio" / "other_utt").mkdir()
    (run / "store" / "audio" / "other_utt" / "decode.wav").write_bytes((utt_dir / "decode.wav").read_bytes())
    listed = {a["path"] for a in json.loads((run / "result.json").read_text())["artifacts"] if a["kind"] == "audio"}
    assert main(["ablate", "--store", str(store), "--out", str(run), "--n-utts", "2", *ARGS]) == 0
    assert {p: p.stat().st_mtime_ns for p in cache} == stamp
    pd.testing.assert_frame_equal(pd.read_csv(run / "store" / "per_utterance.csv"), before)
    again = {a["path"] for a in json.loads((run / "result.json").read_text())["artifacts"] if a["kind"] == "audio"}
    assert again == listed and {f"store/audio/{utt_dir.name}/{n}.wav" for n in ("decode", "drop_1", "swap_4")} <= again
    (utt_dir / "noise_3.wav").unlink()  # the module's other tests expect one example folder
    shutil.rmtree(run / "store" / "audio" / "other_utt")


def test_swapping_every_layer_gives_the_donor_and_is_never_best(store, tmp_path):
    """Known answer: with all layers swapped (equal lengths after cropping, crop alignment) the edit *is*
    the donor's codes, so its decode is the donor's decode and the similarity to the target is exactly 1.
    That trivial conversion is listed but never ranked, never "best", never the published comparison."""
    from codeclens.analyses.ablate import ablate

    out = tmp_path / "vc"
    res = ablate(store, out=out, interventions=("swap:1-4", "swap:3-4"), measures=("speaker",), n_utts=1, examples=1,
                 max_seconds=1.0, n_boot=50, donor_align="crop", progress=False)
    vc = pd.read_csv(out / "store" / "voice_conversion.csv").set_index("intervention")
    assert vc.loc["swap 1-4", "cos_target"] == pytest.approx(1.0, abs=1e-5)
    assert vc.loc["swap 1-4", "cos_source"] == pytest.approx(vc.loc["swap 1-4", "cos_source_vs_target_unedited"], abs=1e-5)
    assert vc.loc["swap 1-4", "all_layers"] and pd.isna(vc.loc["swap 1-4", "rank"]) and vc.loc["swap 3-4", "rank"] == 1
    assert "'swap 3-4'" in res.summary and "'swap 1-4'" not in res.summary
    (d,) = list((out / "store" / "audio").iterdir())
    assert np.array_equal(sf.read(d / "swap_1-4.wav")[0], sf.read(d / "donor.wav")[0])
    pub = pd.read_csv(out / "published_vc.csv")
    ours = pub[pub["source"] == "ours"]
    assert len(ours) == 1 and ours["system"].iloc[0].endswith("swap 3-4")


@pytest.mark.parametrize("extra, needle", [
    (["--layers", "9"], "has 4 layers"),
    (["--interventions", "zero"], "unknown intervention"),
    (["--measures", "vibes"], "unknown measure"),
    (["--asr", "/no/such/asr"], "not found"),
])
def test_bad_input_is_one_line(store, tmp_path, capsys, extra, needle):
    rc = main(["ablate", "--store", str(store), "--out", str(tmp_path / "o"), "--quiet", "--n-utts", "1", *extra])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and needle in err and len(err.splitlines()) == 1


def test_missing_store_is_one_line(tmp_path, capsys):
    assert main(["ablate", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "not a feature store" in capsys.readouterr().err


def test_output_path_that_is_a_file_is_one_line(store, tmp_path, capsys):
    (tmp_path / "o").write_text("")
    assert main(["ablate", "--store", str(store), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is a file" in err and len(err.splitlines()) == 1


def test_phone_accuracy_on_reencoded_audio(melrvq_dir, tmp_path):
    """Content: a phone probe on re-encoded decodes beats the majority-phone rate on the unedited
    decode and falls when only the last (finest) residual layer is kept."""
    from codeclens.analyses.ablate import ablate

    st = tmp_path / "syn-store"
    rc = main(["extract", "--corpus", f"synthetic:{tmp_path / 'syn'}?n=8&accents=en-us&speakers_per_accent=4&seed=0&progress=0",
               "--codec", f"melrvq?checkpoint={melrvq_dir}", "--out", str(st), "--labels", "phone", "--quiet"])
    assert rc == 0
    s = Store(st)
    majority = s.frames["phone"].value_counts(normalize=True).iloc[0]
    res = ablate(s, out=tmp_path / "o", interventions=("only:4",), measures=("phone",), n_utts=2, examples=0,
                 max_seconds=1.5, n_boot=50, progress=False)
    assert "phone accuracy from" in res.summary
    per = pd.read_csv(tmp_path / "o" / "syn-store" / "per_utterance.csv")
    acc = per.pivot_table(index="utt", columns="intervention", values="phone_acc")
    assert (acc["none"] > majority + 0.1).all(), (acc, majority)
    assert (acc["only 4"] < acc["none"]).all(), acc
