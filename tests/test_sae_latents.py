"""sae-latents: planted phone (layer 1) and F0 (layer 2) structure is found in the right layer."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.sae.latents import probe_latents
from codeclens.cli import main
from codeclens.store.arrays import write_store


pytestmark = pytest.mark.usefixtures("one_thread")


def planted_store(path, seed=0, n_spk=10, utts=3, d=8, K=16):
    """Layer 1: code c sits on axis phone(c) = c % 4 (phone is in layer 1 only).
    Layer 2: code c is a_c · v with f0 = 100 + 50 a_c (F0 is in layer 2 only).
    Speakers are random with respect to both."""
    rng = np.random.default_rng(seed)
    t1 = 0.05 * rng.standard_normal((K, d)).astype(np.float32)
    t1[np.arange(K), np.arange(K) % 4] += 2.0
    a = np.linspace(0.5, 2.0, K)
    v = np.zeros(d, np.float32)
    v[5] = 1.0
    t2 = (a[:, None] * v[None]).astype(np.float32)
    rows, codes = [], []
    for s in range(n_spk):
        for u in range(utts):
            n = 30
            codes.append(np.stack([rng.integers(0, K, n), rng.integers(0, K, n)], 1))
            rows.append({"id": f"s{s}u{u}", "speaker": f"s{s}", "n_frames": n,
                         "split_spk": "train" if s < 6 else "test", "split_utt": "train"})
    c = np.concatenate(codes)
    frames = pd.DataFrame({"phone": np.array(["aa", "iy", "s", "m"])[c[:, 0] % 4],
                           "f0_hz": 100 + 50 * a[c[:, 1]] + rng.normal(0, 1, len(c)),
                           "voiced": True})
    return write_store(path, c, [t1, t2], pd.DataFrame(rows), frames)


def test_probe_latents_known_answers():
    z = np.zeros((100, 3))
    lab = np.array(["x"] * 50 + ["y"] * 50)
    z[:50, 0] = 1.0  # fires exactly on class x
    z[::2, 1] = 1.0  # fires on every other row: half x, half y
    f = np.linspace(0, 1, 100)
    z[:, 2] = f + 0.01  # monotone in the continuous attribute
    df = probe_latents(z, {"lab": lab, "f": f}, min_active=10)
    cat = df[df.attribute == "lab"].set_index("latent")
    assert cat.loc[0, "purity"] == 1.0 and cat.loc[0, "best"] == "x" and cat.loc[0, "recall"] == 1.0
    assert cat.loc[1, "purity"] == 0.5 and cat.loc[0, "lift"] == 2.0
    con = df[df.attribute == "f"].set_index("latent")
    assert con.loc[2, "rho"] == pytest.approx(1.0)


def test_probe_latents_ignores_unlabelled_rows():
    # latent 0 fires on 25 'x' rows and 25 unlabelled rows: among labelled rows it is pure for x
    z = np.zeros((100, 2))
    z[:50, 0] = 1.0
    z[50:, 1] = 1.0
    lab = np.array(["x"] * 25 + [None] * 10 + [float("nan")] * 10 + [""] * 5 + ["y"] * 50, dtype=object)
    cat = probe_latents(z, {"lab": lab}, min_active=10).set_index("latent")
    assert set(cat["best"]) == {"x", "y"}
    assert cat.loc[0, "purity"] == 1.0 and cat.loc[0, "lift"] == pytest.approx(3.0)  # P(x) = 25/75


def test_sae_latents_cli_finds_planted_layers(tmp_path):
    st = planted_store(tmp_path / "st")
    out = tmp_path / "out"
    assert main(["sae-latents", str(st), "--out", str(out), "--q", "2", "--s", "0.25", "--epochs", "30",
                 "--lr", "3e-3", "--batch-size", "64", "--min-active", "10", "--quiet"]) == 0
    summ = pd.read_csv(out / "monosemantic.csv").set_index(["repr", "attribute"])
    assert set(summ.index.get_level_values(1)) == {"phone", "speaker", "f0_hz"}
    assert summ.loc[("layer:1", "phone"), "fraction"] >= 0.5
    assert summ.loc[("layer:1", "speaker"), "monosemantic"] == 0
    assert summ.loc[("layer:2", "f0_hz"), "best_score"] > 0.9
    assert summ.loc[("layer:1", "f0_hz"), "best_score"] < 0.5
    assert summ.loc[("layer:2", "phone"), "monosemantic"] == 0
    assert (summ["null_over_threshold"] <= summ["over_threshold_raw"]).all()
    assert summ.loc[("layer:1", "phone"), "null_over_threshold"] == 0
    assert (out / "monosemantic.png").is_file() and (out / "result.json").is_file()
    # a re-run reloads the saved SAEs instead of training them again
    w = out / "stores" / "st" / "saes" / "layer1" / "sae.safetensors"
    before = w.stat().st_mtime_ns
    assert main(["sae-latents", str(st), "--out", str(out), "--q", "2", "--s", "0.25", "--epochs", "30",
                 "--lr", "3e-3", "--batch-size", "64", "--min-active", "10", "--quiet"]) == 0
    assert w.stat().st_mtime_ns == before
    assert pd.read_csv(out / "monosemantic.csv").set_index(["repr", "attribute"]).equals(summ)


def test_monosemanticity_is_calibrated_against_base_rate_and_null(rng):
    """A dominant class (90% of frames) makes a random latent 0.9-pure: over the raw threshold,
    but not above its shuffled-label null and with calibrated purity ~0. A latent that truly
    fires on the rare class beats the null with calibrated purity 1."""
    n = 2000
    lab = np.where(rng.random(n) < 0.9, "sil", "aa")
    z = np.zeros((n, 2))
    z[rng.random(n) < 0.3, 0] = 1.0  # random with respect to the label
    z[lab == "aa", 1] = 1.0  # exactly the rare class
    df = probe_latents(z, {"phone": lab}, min_active=10, null_shuffles=20, seed=0).set_index("latent")
    assert df.loc[0, "purity"] > 0.85 and df.loc[0, "purity"] <= df.loc[0, "null_score"] + 0.02
    assert abs(df.loc[0, "calibrated"]) < 0.15
    assert df.loc[1, "purity"] == 1.0 and df.loc[1, "calibrated"] == 1.0 and df.loc[1, "null_score"] < 0.97
    # utterance-constant labels (speaker) are shuffled between utterances: a latent bound to one
    # utterance is pure under the null too, so it is not counted as speaker-selective
    utt = np.repeat(np.arange(40), 50)
    spk = np.array([f"s{u % 8}" for u in utt])
    z = np.zeros((len(utt), 1))
    z[utt == 3, 0] = 1.0
    d = probe_latents(z, {"speaker": spk}, min_active=10, groups=utt, null_shuffles=10).iloc[0]
    assert d["purity"] == 1.0 and d["null_score"] == 1.0
    # continuous: a latent unrelated to F0 has a null |rho| as large as its own
    f0 = rng.normal(200, 30, n)
    z = np.c_[rng.random(n), f0 - f0.min()]
    c = probe_latents(z, {"f0_hz": f0}, min_active=10, null_shuffles=10).set_index("latent")
    assert c.loc[1, "rho"] == pytest.approx(1.0) and c.loc[1, "null_score"] < 0.1
    assert c.loc[0, "score"] < 3 * c.loc[0, "null_score"] + 0.02


def test_sae_latents_refuses_shared_speakers(tmp_path, capsys):
    st = planted_store(tmp_path / "st", n_spk=4, utts=2)
    u = pd.read_parquet(st / "utterances.parquet")
    u["split_mix"] = np.where(np.arange(len(u)) % 2 == 0, "train", "test")  # every speaker in both
    u.to_parquet(st / "utterances.parquet")
    assert main(["sae-latents", str(st), "--out", str(tmp_path / "out"), "--split-column", "split_mix",
                 "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("codeclens: error:") and "speaker-disjoint" in err and "\n" not in err
