"""SAE study end to end: real stores from arrays, the real CLI, save/load, resume, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from codeclens.analyses.base import AnalysisResult
from codeclens.cli import main
from codeclens.errors import CodeclensError
from codeclens.store.arrays import write_store

UK = "UK <i>&</i>"  # a label with HTML in it: the browser must escape it


pytestmark = pytest.mark.usefixtures("one_thread")


def accent_store(path: Path, spec: str, seed: int = 0, n_spk: int = 10, utts: int = 4, d: int = 16,
                 L: int = 3, K: int = 32, accents=("en-us", "en-gb")) -> Path:
    """Accent tilts which layer-1 codes are used; speakers are assigned speaker-disjoint
    splits (60% train / 20% val / 20% test per accent); frames carry a 'phone' column."""
    rng = np.random.default_rng(seed)
    tables = [rng.standard_normal((K, d)).astype(np.float32) for _ in range(L)]
    tables[0][: K // 2, :4] += 1.0  # the two halves of layer 1 differ along 4 dimensions
    tables[0][K // 2 :, :4] -= 1.0
    rows, codes, phones = [], [], []
    for a, acc in enumerate(accents):
        p = np.ones(K)
        p[a * K // 2:(a + 1) * K // 2] += 4
        p /= p.sum()
        for s in range(n_spk):
            split = "train" if s < 0.6 * n_spk else ("val" if s < 0.8 * n_spk else "test")
            for u in range(utts):
                n = int(rng.integers(15, 30))
                c = np.stack([rng.choice(K, n, p=p)] + [rng.integers(0, K, n) for _ in range(L - 1)], 1)
                codes.append(c)
                phones += list(np.array(["a", "b", "c"])[c[:, 1] % 3])
                rows.append({"id": f"a{a}s{s}u{u}", "speaker": f"a{a}s{s}", "accent": acc, "n_frames": n,
                             "path": f"/audio/a{a}s{s}u{u}.wav", "split_spk": split, "split_utt": ["train", "val", "test"][u % 3]})
    return write_store(path, np.concatenate(codes), tables, pd.DataFrame(rows), pd.DataFrame({"phone": phones}),
                       codec_spec=spec)


SMALL = ["--q", "2,4", "--s", "0.5,0.1", "--epochs", "8", "--long-epochs", "10", "--long-q", "2",
         "--lr", "3e-3", "--batch-size", "16", "--max-iter", "300", "--quiet", "--browser-latents", "8",
         "--sae-seeds", "2", "--clf-seeds", "1", "--n-boot", "200"]


def test_save_load_round_trip(tmp_path, rng):
    from codeclens.analyses.sae.io import load_sae, save_sae
    from codeclens.analyses.sae.model import SAEShape, TopKSAE

    sae = TopKSAE(SAEShape(8, 24, 3), seed=3, b_pre=rng.standard_normal(8).astype(np.float32), scale=2.5)
    save_sae(tmp_path / "s", sae, {"q": 3.0, "note": "x"})
    back, meta = load_sae(tmp_path / "s")
    assert meta["q"] == 3.0 and meta["k"] == 3 and meta["d_z"] == 24
    for (n, a), (_, b) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), n
    assert float(back.scale) == 2.5 and meta["scale"] == 2.5
    x = torch.as_tensor(rng.standard_normal((5, 8)), dtype=torch.float32)
    assert torch.equal(sae.encode(x), back.encode(x))
    with pytest.raises(CodeclensError, match="not a saved SAE"):
        load_sae(tmp_path / "nothing")


def test_cli_end_to_end(tmp_path, capsys):
    # eSpeak-style accent codes: the paper's grouping makes them US vs UK
    s6 = accent_store(tmp_path / "enc6", "encodec:24khz@6kbps", seed=0)
    s15 = accent_store(tmp_path / "enc15", "encodec:24khz@1.5kbps", seed=1)
    out = tmp_path / "out"
    assert main(["sae", str(s6), str(s15), "--out", str(out), *SMALL]) == 0
    res = AnalysisResult.load(out)
    assert res.analysis == "sae" and res.summary
    for a in res.artifacts + res.published:
        assert (out / a.path).is_file(), a.path
    kinds = {a.kind for a in res.artifacts}
    assert {"figure", "table", "page"} <= kinds
    ref = pd.read_csv(out / "reference_f1.csv")
    assert list(ref["classes"]) == ["UK,US", "UK,US"] and set(ref["paper_setting"]) == {"us_vs_uk"}
    assert (ref["f1_ref"] > 0.75).all()  # the planted accent signal is found on u
    assert (ref["f1_ref_low"] <= ref["f1_ref"]).all() and (ref["f1_ref"] <= ref["f1_ref_high"]).all()
    # roles are speaker-disjoint and sized as planted (2 val speakers per accent: 1 monitors, 1 trains)
    assert list(ref["speakers_sae"]) == [12, 12] and list(ref["speakers_test"]) == [4, 4]
    assert list(ref["speakers_clf"]) == [2, 2] and list(ref["speakers_monitor"]) == [2, 2]
    all_df = pd.read_csv(out / "results.csv")
    res_df = all_df[all_df["kind"] == "feature"]
    assert len(res_df) == 2 * 4 * 3 and set(all_df["feature"]) == {"z", "position", "magnitude", "random_topk",
                                                                      "pca_k", "shuffled"}
    np.testing.assert_allclose(all_df["delta_f1"], all_df["f1"] - all_df["f1_ref"])
    assert (all_df["delta_f1_low"] <= all_df["delta_f1"] + 1e-9).all()
    assert (all_df["delta_f1"] <= all_df["delta_f1_high"] + 1e-9).all()
    assert set(res_df["n_seeds"]) == {2} and res_df["f1_val"].notna().all()
    assert (res_df["l0"] <= res_df["k"]).all() and res_df["dead_fraction"].between(0, 1).all()
    assert set(res_df.loc[res_df.s == 0.1, "epochs"]) == {8, 10}
    # `codeclens figures` redraws every SAE figure from the tables alone
    from codeclens.report.rerender import sae_figures

    pngs = sorted(p.name for p in out.glob("*.png"))
    for p in out.glob("*.png"):
        p.unlink()
    assert sorted(p.name for p in sae_figures(out)) == pngs and "training.png" in pngs
    con = pd.read_csv(out / "contrasts.csv")
    assert set(con["contrast"]) == {"position - magnitude", "z - random_topk", "z - pca_k", "z - shuffled"}
    sel = pd.read_csv(out / "selected.csv")
    assert set(sel["selected_on"]) == {"validation"}
    for _, r in sel.iterrows():  # the choice is the validation argmax, whatever the test says
        z = res_df[(res_df.store == r["store"]) & (res_df.feature == "z")]
        assert r["f1_val"] == pytest.approx(z["f1_val"].max())
    br = pd.read_csv(out / "bitrate.csv")
    assert {"1.5kbps_s10", "6kbps_s10"} <= set(br.columns)
    assert (out / "bitrate.png").is_file()
    t1 = pd.read_csv(out / "published_table1.csv")
    assert set(t1["codec"]) == {"encodec_6kbps", "encodec_1.5kbps"} and set(t1["setting"]) == {"us_vs_uk"}
    assert t1["source"].str.contains("Wang et al. 2026").all()
    assert set(t1["published"]) == {80.20, 81.11}
    assert {"published_table2.csv", "published_table3.csv"} <= {a.path for a in res.published}
    t3 = pd.read_csv(out / "published_table3.csv").dropna(subset=["ours"])  # s = 0.1 is in our grid
    assert len(t3) and (t3["ours_low"] <= t3["ours"]).all() and (t3["ours"] <= t3["ours_high"]).all()
    page = (out / "stores" / "enc6" / "browser" / "q2_s0.5.html").read_text()
    assert "file:///audio/a0s" in page and "<audio" in page
    lat = pd.read_csv(out / "label_latents.csv")
    assert len(lat) and (lat["weight"] > 0).all() and set(lat["store"]) == {"enc6", "enc15"}
    first = lat[(lat.store == "enc6") & (lat.q == 2) & (lat.s == 0.5)].sort_values("rank")["latent"]
    if len(first):
        assert f"latent {first.iloc[0]} (label latent)" in page
    # saved SAEs reload and describe themselves
    from codeclens.analyses.sae.io import load_sae

    sae, meta = load_sae(out / "stores" / "enc6" / "saes" / "q4_s0.1" / "seed1")
    assert (meta["q"], meta["s"], meta["k"], meta["d_z"], meta["seed"]) == (4.0, 0.1, 2, 64, 1)
    assert meta["repr"] == "mean(cumulative:3)" and meta["history"] and meta["aux_k"] == 8  # AuxK on: d/2

    # re-run resumes: SAEs are not retrained
    w = out / "stores" / "enc6" / "saes" / "q2_s0.5" / "seed0" / "sae.safetensors"
    before = w.stat().st_mtime_ns
    assert main(["sae", str(s6), str(s15), "--out", str(out), *SMALL]) == 0
    assert w.stat().st_mtime_ns == before
    assert pd.read_csv(out / "results.csv").equals(all_df)
    # relabelling the store (same codes, new labels) invalidates SAEs and classifier caches
    u = pd.read_parquet(s6 / "utterances.parquet")
    u["accent"] = u["accent"].map({"en-us": "en-gb", "en-gb": "en-us"})
    u.to_parquet(s6 / "utterances.parquet")
    assert main(["sae", str(s6), "--out", str(out), *SMALL]) == 0
    assert w.stat().st_mtime_ns != before


def test_published_rows_only_for_matching_settings(tmp_path):
    """A store whose labels are not the paper's task (HTML label, no grouping), or whose codec is
    another variant (DAC 16 kHz), gets no published row, and the run says why."""
    st = accent_store(tmp_path / "st", "dac:16khz", seed=4, n_spk=5, utts=2, accents=("US", UK))
    out = tmp_path / "out"
    fast = [a for a in SMALL] + ["--sae-seeds", "1"]
    assert main(["sae", str(st), "--out", str(out), *fast, "--q", "2", "--s", "0.5", "--grouping", "none"]) == 0
    res = AnalysisResult.load(out)
    assert not res.published
    why = pd.read_csv(out / "published_match.csv")["published_reason"].iloc[0]
    assert "24 kHz" in why and "not one of the paper's binary tasks" in why
    assert "No published comparison" in res.summary
    page = (out / "stores" / "st" / "browser" / "q2_s0.5.html").read_text()
    assert "UK &lt;i&gt;&amp;&lt;/i&gt;" in page and "<i>&</i>" not in page
    # the same labels under the paper's grouping: 'UK <i>&</i>' is no British Isles name -> non-US-UK
    assert main(["sae", str(st), "--out", str(tmp_path / "g"), *fast, "--q", "2", "--s", "0.5"]) == 0
    ref = pd.read_csv(tmp_path / "g" / "reference_f1.csv")
    assert ref["classes"].iloc[0] == "US,non-US-UK" and ref["paper_setting"].iloc[0] == "us_vs_non_us_uk"


def test_cli_frame_level_and_errors(tmp_path, capsys):
    st = accent_store(tmp_path / "st", "melrvq", seed=2, n_spk=6, utts=2)
    out = tmp_path / "frames"
    args = ["sae", str(st), "--out", str(out), "--repr", "cumulative:2", "--label", "phone", "--q", "2",
            "--s", "0.25", "--epochs", "2", "--batch-size", "64", "--max-iter", "200", "--quiet",
            "--browser-latents", "4"]
    assert main(args) == 0
    res = json.loads((out / "result.json").read_text())
    assert not res["published"]  # melrvq is not in the paper
    df = pd.read_csv(out / "results.csv")
    assert df["repr"].iloc[0] == "cumulative:2" and set(df.loc[df.kind == "feature", "feature"]) == {"z", "position", "magnitude"}
    page = (out / "stores" / "st" / "browser" / "q2_s0.25.html").read_text()
    assert "#t=" in page  # frame clips cut from the utterance audio
    capsys.readouterr()
    assert main(["sae", str(st), "--out", str(tmp_path / "bad"), "--label", "dialect", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "dialect" in err and "\n" not in err
    assert main(["sae", str(st), "--out", str(tmp_path / "bad"), "--split-column", "split_utt", "--quiet"]) == 2
    assert "speaker-disjoint" in capsys.readouterr().err
    assert main(["sae", str(st), "--out", str(tmp_path / "bad"), "--s", "0,2", "--quiet"]) == 2


def test_published_tables_match_shared_reference():
    from codeclens.analyses.sae.published import table

    # The project's shared folder sits beside the checkout (CI and development alike).
    ref = Path(__file__).resolve().parents[2] / "shared" / "reference"
    if not ref.is_dir():
        pytest.skip(f"no shared reference folder at {ref}")
    for name, f in (("table1", "wang2026_table1_reference_f1.csv"), ("table2", "wang2026_table2_delta_f1.csv"),
                    ("table3", "wang2026_table3_bitrate.csv")):
        pd.testing.assert_frame_equal(table(name), pd.read_csv(ref / f))


def test_roles_are_speaker_disjoint_with_resplit(tmp_path):
    from codeclens.analyses.sae.data import build_task
    from codeclens.store import Store

    st = Store(accent_store(tmp_path / "st", "arrays", seed=3, n_spk=10, utts=2, accents=("US", UK)))
    rep = st.reprs("mean(cumulative:3)")[0]
    for fr in ((), (0.4, 0.4, 0.2)):
        t = build_task(st, rep, "accent", speaker_fractions=fr, monitor_fraction=0.5)
        spk = {r: set(t.speaker[rows]) for r, rows in t.roles.items()}
        for a in spk:
            for b in spk:
                assert a == b or not spk[a] & spk[b], (fr, a, b)
        assert set(np.concatenate(list(t.roles.values()))) <= set(range(st.n_utterances))
    # 10 speakers per accent at 0.4 / 0.4 / 0.2: 4 SAE, 4 classifier (2 of them monitor), 2 test
    assert [len(spk[r]) for r in ("sae", "clf", "monitor", "test")] == [8, 4, 4, 4]
    with pytest.raises(CodeclensError, match="summing to 1"):
        build_task(st, rep, "accent", speaker_fractions=(0.5, 0.5, 0.5))
    t = build_task(st, rep, "accent", classes=("US",) + (UK,))
    assert set(t.y[t.roles["test"]]) == {"US", UK}
    with pytest.raises(CodeclensError, match="no value"):
        build_task(st, rep, "accent", classes=("FR",))


def test_label_map():
    from codeclens.analyses.sae.data import map_labels

    y = np.array(["US", "UK", "Irish", "Indian", "", "Scottish"], dtype=object)
    out = map_labels(y, ("US=US", "UK=", "Irish=", "*=non-US-UK"))
    assert list(out) == ["US", "", "", "non-US-UK", "", "non-US-UK"]
    assert list(map_labels(y, ("Irish=UK",))) == ["US", "UK", "UK", "Indian", "", "Scottish"]
    with pytest.raises(CodeclensError, match="FROM=TO"):
        map_labels(y, ("US",))


def test_duplicate_analyses_are_flagged(tmp_path):
    """Labels already US / UK: the paper grouping and a US,UK class filter change nothing, and a
    second analysis beside the first with the same task is reported as a duplicate."""
    st = accent_store(tmp_path / "st", "mimi", seed=5, n_spk=5, utts=2, accents=("US", "UK"))
    fast = SMALL + ["--sae-seeds", "1", "--q", "2", "--s", "0.5", "--no-browser"]
    assert main(["sae", str(st), "--out", str(tmp_path / "runs" / "sae"), *fast]) == 0
    first = AnalysisResult.load(tmp_path / "runs" / "sae").summary
    assert "change no label" in first and "same task as in" not in first
    assert main(["sae", str(st), "--out", str(tmp_path / "runs" / "sae_all"), *fast, "--classes", "US,UK"]) == 0
    second = AnalysisResult.load(tmp_path / "runs" / "sae_all").summary
    assert "same task as in" in second and str(tmp_path / "runs" / "sae") in second
    # a genuinely different task (another class set) is no duplicate
    assert main(["sae", str(st), "--out", str(tmp_path / "runs" / "other"), *fast, "--grouping", "none",
                 "--label-map", "US=A,UK=B"]) == 0
    assert "same task" not in AnalysisResult.load(tmp_path / "runs" / "other").summary
