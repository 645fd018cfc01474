"""t-SNE geometry views: determinism, small codebooks, planted structure, pitch means, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.tsne import common_perplexity, embed, knn_agreement
from codeclens.cli import main
from codeclens.store import Store
from test_tokens import make_planted_store


def test_embed_is_deterministic_for_a_seed(rng):
    x = rng.normal(size=(120, 8))
    a, b = embed(x, 15, seed=3), embed(x, 15, seed=3)
    assert a.shape == (120, 2)
    assert np.array_equal(a, b)
    assert not np.allclose(a, embed(x, 15, seed=4))


def test_small_codebook_and_perplexity_limits(rng):
    assert common_perplexity(30, [1024, 16, 200]) == pytest.approx(5.0)
    assert common_perplexity(4, [1024, 16]) == 4
    x = rng.normal(size=(16, 4))
    assert embed(x, common_perplexity(30, [16]), seed=0).shape == (16, 2)
    with pytest.raises(ValueError):
        embed(x, 6.0)  # 6 >= 16/3


def test_embedding_keeps_planted_clusters(rng):
    centres = 8.0 * rng.normal(size=(4, 10))
    lab = np.repeat(np.arange(4), 30)
    x = centres[lab] + rng.normal(size=(120, 10))
    assert knn_agreement(embed(x, 10, seed=0), lab) > 0.95
    assert knn_agreement(embed(rng.normal(size=(120, 10)), 10, seed=0), lab) < 0.5


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_store(tmp_path_factory.mktemp("tsne") / "store", n_utt=48)


def test_cli_tsne_views_match_planted_structure(planted, tmp_path):
    out1, out2 = tmp_path / "l1", tmp_path / "l2"
    assert main(["tsne", "--store", str(planted), "--layer", "1", "--out", str(out1), "--quiet"]) == 0
    assert main(["tsne", "--store", str(planted), "--layer", "2", "--out", str(out2), "--quiet"]) == 0
    res = json.loads((out2 / "result.json").read_text())
    assert res["analysis"] == "tsne"
    paths = [a["path"] for a in res["artifacts"]]
    assert {"tsne.png", "tsne_codebook.csv", "tsne_speakers.csv", "tsne_pitch.csv"} <= set(paths)
    assert all((out2 / p).is_file() for p in paths)
    # layer 1: codes 0..23 map to phones; their table rows sit near their phone class's centroid
    cb = pd.read_csv(out1 / "tsne_codebook.csv")
    assert (cb.loc[cb["code"] >= 24, "phone_class"] == "unused").all()
    used = cb[cb["phone_class"] != "unused"]
    assert (used["class_share"] == 1.0).all()
    assert knn_agreement(used[["x", "y"]].to_numpy(), used["phone_class"].to_numpy(), k=3) > 0.7
    # layer 2 codes are speaker-specific, so utterance means cluster by speaker; layer 1 means do not
    s1, s2 = pd.read_csv(out1 / "tsne_speakers.csv"), pd.read_csv(out2 / "tsne_speakers.csv")
    assert knn_agreement(s2[["x", "y"]].to_numpy(), s2["speaker"].to_numpy()) > 0.95
    assert knn_agreement(s1[["x", "y"]].to_numpy(), s1["speaker"].to_numpy()) < 0.6


def test_pitch_view_means_equal_brute_force(planted, tmp_path):
    out = tmp_path / "p"
    assert main(["tsne", "--store", str(planted), "--layer", "2", "--vowel", "ɑ", "--out", str(out), "--quiet"]) == 0
    got = pd.read_csv(out / "tsne_pitch.csv").set_index("code")
    s = Store(planted)
    f = s.frames.assign(code=np.asarray(s.codes[:, 1]))
    f = f[(f["phone"] == "ɑ") & f["voiced"] & f["f0_hz"].notna()]
    ref = f.groupby("code")["f0_hz"].agg(["mean", "size"])
    ref = ref[ref["size"] >= 2]
    assert list(got.index) == list(ref.index)
    assert np.allclose(got["mean_f0_hz"], ref["mean"]) and (got["frames"] == ref["size"]).all()


def test_tsne_reruns_identically(planted, tmp_path):
    for d in ("a", "b"):
        assert main(["tsne", "--store", str(planted), "--layer", "3", "--perplexity", "8", "--out",
                     str(tmp_path / d), "--quiet"]) == 0
    for f in ("tsne_codebook.csv", "tsne_speakers.csv"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()


def test_tsne_bad_input(planted, tmp_path, capsys):
    assert main(["tsne", "--store", str(planted), "--layer", "4", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    assert "3 layers" in capsys.readouterr().err
    assert main(["tsne", "--store", str(planted), "--vowel", "zz", "--out", str(tmp_path / "y"), "--quiet"]) == 2
    assert "'zz' does not occur" in capsys.readouterr().err


def test_missing_units_and_spoken_noise_are_not_classes(tmp_path, rng):
    """Issue 12 item 4 in t-SNE: unit -1 is never the pitch view's "vowel", and `spn` frames
    (a noise marker, missing) never make a code "silence"."""
    from codeclens.store.arrays import write_store

    n = 2400
    phone = np.where(np.arange(n) % 2 == 0, "ɑ", "s").astype(object)
    phone[np.arange(n) % 12 == 1] = "spn"
    unit = np.where(phone == "ɑ", 0, 1)
    unit[: 2 * n // 3][phone[: 2 * n // 3] == "ɑ"] = -1  # "no unit" on 2/3 of the vowel frames: the most frequent value
    code = np.where(phone == "ɑ", rng.integers(0, 10, n), np.where(phone == "s", rng.integers(10, 13, n), 13))
    f0 = np.where(phone == "ɑ", 120 + 10 * rng.random(n), np.nan)
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(24)], "speaker": [f"s{i % 4}" for i in range(24)],
                         "n_frames": 100})
    st = write_store(tmp_path / "st", code[:, None], [rng.normal(size=(16, 4)).astype(np.float32)], utts,
                     pd.DataFrame({"phone": phone, "unit": unit, "f0_hz": f0, "voiced": phone == "ɑ"}),
                     frame_rate=50.0)
    out = tmp_path / "t"
    assert main(["tsne", "--store", str(st), "--vowel-label", "unit", "--perplexity", "3", "--out", str(out),
                 "--quiet"]) == 0
    pitch = pd.read_csv(out / "tsne_pitch.csv")
    assert set(pitch["code"]) == set(range(10))
    assert pitch["frames"].sum() == (unit == 0).sum()  # only unit 0, never the -1 frames
    cb = pd.read_csv(out / "tsne_codebook.csv").set_index("code")
    assert cb.loc[13, "phone_class"] == "unused" and cb.loc[0, "phone_class"] == "vowel"


def test_figures_command_redraws_tsne_from_its_tables(planted, tmp_path):
    """The redraw reads the coordinate tables and tsne_figure.json only: the same picture, pixel for pixel."""
    from codeclens.report.rerender import tsne_figures

    out = tmp_path / "t"
    assert main(["tsne", "--store", str(planted), "--layer", "2", "--out", str(out), "--quiet"]) == 0
    first = (out / "tsne.png").read_bytes()
    meta = json.loads((out / "tsne_figure.json").read_text())
    assert meta["views"] == ["codebook", "speakers", "pitch"] and meta["perplexity"] > 0
    for f in out.glob("tsne.*"):
        f.unlink()
    assert {p.name for p in tsne_figures(out)} == {"tsne.png", "tsne.svg", "tsne.pdf"}
    assert (out / "tsne.png").read_bytes() == first
    (out / "tsne_figure.json").unlink()  # a run from before the metadata: kept as it is
    assert tsne_figures(out) == []
