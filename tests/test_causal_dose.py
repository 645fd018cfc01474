"""Dose-response curves on a codec whose decoder uses layer 1 for spectrum and layer 3 for pitch
(and ignores layers 2 and 4): flat at exactly 0 for ignored layers, monotone for the pitch layer,
and at full dose equal to the full interchange."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from causal_vector_toy import make_store
from codeclens.analyses.causal.dose import nested_frames
from codeclens.cli import main
from codeclens.util.figures import figure_formats


@pytest.fixture(scope="module")
def vtoy(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("vtoy") / "store")


def test_nested_frames():
    sets = [nested_frames(40, f, "u1", 0) for f in (0.0, 0.1, 0.25, 0.5, 1.0)]
    assert [int(s.sum()) for s in sets] == [0, 4, 10, 20, 40]
    for a, b in zip(sets, sets[1:]):
        assert not (a & ~b).any()  # each set contains the previous one
    assert not np.array_equal(nested_frames(40, 0.5, "u2", 0), sets[3])  # utterances differ


def test_dose_response_known_answers(vtoy, tmp_path, capsys, one_thread):
    out = tmp_path / "dose"
    with figure_formats(["png"]):
        rc = main(["causal", "--store", str(vtoy.path), "--out", str(out), "--consumers", "", "--n-utts", "3",
                   "--measures", "f0_kept,loudness", "--interchange-sets", "", "--max-seconds", "0.4", "--n-boot", "100",
                   "--absent", "", "--dose", "fraction,alpha", "--dose-fractions", "0.25,1", "--dose-alphas",
                   "0.25,0.5,1", "--dose-modes", "swap,drop", "--dose-layers", "2,3", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    per = pd.read_csv(out / "dose_per_utterance.csv")
    # layer 2 is ignored by the decoder: every effect exactly 0, at every dose
    ign = per[per["layer"] == 2]
    assert len(ign) and (ign[["f0_kept", "loudness"]].to_numpy() == 0).all()
    assert (ign["f0_follows_donor"].dropna() == 0).all()
    # the pitch layer: monotone in alpha (F0 kept falls, F0 follows the donor more), per utterance
    p = per[(per["layer"] == 3) & (per["dose"] == "alpha")]
    for _, g in p.groupby("utt"):
        g = g.sort_values("x")
        assert np.all(np.diff(g["f0_kept"]) <= 1e-12) and np.all(np.diff(g["f0_follows_donor"]) >= -1e-12)
    assert p.loc[p["x"] == 1, "f0_kept"].mean() < -0.5
    # full dose = the interchange of layer 3: alpha = 1 (vectors) and fraction = 1 (the token swap the
    # interchange decodes) give the same effects, and pitch follows the donor
    full = p[p["x"] == 1].set_index("utt")
    frac1 = per[(per["layer"] == 3) & (per["dose"] == "fraction") & (per["mode"] == "swap") & (per["x"] == 1)].set_index("utt")
    for col in ("f0_kept", "loudness", "f0_follows_donor"):
        assert np.allclose(full[col], frac1.loc[full.index, col], atol=1e-9)
    assert full["f0_follows_donor"].mean() > 0.9
    # fraction 1 of drop = dropping the layer: F0 no longer kept anywhere the source was voiced
    drop1 = per[(per["layer"] == 3) & (per["mode"] == "drop") & (per["x"] == 1)]
    assert (drop1["f0_kept"] < -0.9).all()
    # and the fraction curve's effect on F0 grows with the fraction of frames swapped
    fs = per[(per["layer"] == 3) & (per["dose"] == "fraction") & (per["mode"] == "swap")].groupby("x")["f0_kept"].mean()
    assert fs.is_monotonic_decreasing and fs.loc[1.0] < fs.loc[0.25] < 0
    d = pd.read_csv(out / "dose_response.csv")
    assert {"ci_low", "ci_high", "n_speakers"} <= set(d.columns)
    assert set(d["dose"]) == {"fraction", "alpha"} and set(d["mode"]) == {"swap", "drop", "interpolate"}
    assert (out / "dose_response.png").is_file()


def test_dose_bad_options(vtoy, tmp_path, capsys):
    assert main(["causal", "--store", str(vtoy.path), "--out", str(tmp_path / "x"), "--dose", "nope"]) == 2
    assert "dose: unknown nope" in capsys.readouterr().err
    assert main(["causal", "--store", str(vtoy.path), "--out", str(tmp_path / "x"), "--consumers", "", "--dose",
                 "alpha", "--dose-layers", "9", "--interchange-sets", "", "--absent", ""]) == 2
    assert "beyond the store's 4 layers" in capsys.readouterr().err
