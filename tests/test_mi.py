"""Mutual information: analytic values, bias correction, shuffled null, variational brackets, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses import infotheory as it
from codeclens.analyses.club import BracketConfig, mi_bracket
from codeclens.cli import main
from codeclens.store import Store
from test_tokens import make_planted_store


def _h2(p: float) -> float:
    return -p * math.log(p) - (1 - p) * math.log(1 - p)


# -- discrete estimators ---------------------------------------------------------------
def test_plugin_mi_equals_closed_form_2x2_and_4x4():
    # binary symmetric channel with crossover 0.2 and uniform input: I = ln 2 - h(0.2)
    P = np.array([[0.4, 0.1], [0.1, 0.4]])
    assert it.mutual_information(P) == pytest.approx(math.log(2) - _h2(0.2), abs=1e-12)
    # 4-ary symmetric channel: Y = X w.p. 1-e, else one of the 3 others uniformly
    e = 0.3
    P4 = np.full((4, 4), e / 3 / 4)
    np.fill_diagonal(P4, (1 - e) / 4)
    assert it.mutual_information(P4) == pytest.approx(math.log(4) - _h2(e) - e * math.log(3), abs=1e-12)
    # independence and determinism
    assert it.mutual_information(np.outer([0.2, 0.8], [0.5, 0.3, 0.2])) == pytest.approx(0.0, abs=1e-12)
    assert it.mutual_information(np.diag([0.25] * 4)) == pytest.approx(math.log(4))
    # counts give the same answer as probabilities
    assert it.mutual_information(P4 * 1200) == pytest.approx(it.mutual_information(P4))


def test_miller_madow_removes_the_plugin_bias(rng):
    K, N = 10, 1000
    P = rng.dirichlet(np.ones(K * K)).reshape(K, K)
    truth = it.mutual_information(P)
    err_plug, err_mm = [], []
    for _ in range(30):
        c = np.bincount(rng.choice(K * K, size=N, p=P.ravel()), minlength=K * K).reshape(K, K)
        err_plug.append(it.mutual_information(c) - truth)
        err_mm.append(it.mutual_information(c, miller_madow=True) - truth)
    assert np.mean(err_plug) > 0.02  # plug-in MI is biased upwards at this sample size
    assert abs(np.mean(err_mm)) < 0.01
    assert abs(np.mean(err_mm)) < 0.3 * np.mean(err_plug)


def test_shuffled_baseline_is_near_zero(rng):
    labels = rng.integers(0, 12, 6000)
    codes = (labels * 5 + rng.integers(0, 5, 6000)) % 64  # strongly dependent
    real = it.mutual_information(it.cooccurrence(codes, labels, 64, 12), miller_madow=True)
    sh_mm = it.shuffled_mi(codes, labels, 64, 12, n_shuffles=8, miller_madow=True)
    sh_plug = it.shuffled_mi(codes, labels, 64, 12, n_shuffles=8, miller_madow=False)
    assert real > 2.0
    assert abs(sh_mm.mean()) < 0.01
    assert sh_plug.mean() > sh_mm.mean() + 0.03  # the null of the raw plug-in estimator is visibly positive


def test_miller_madow_refuses_probabilities():
    with pytest.raises(ValueError):
        it.mutual_information(np.array([[0.4, 0.1], [0.1, 0.4]]), miller_madow=True)


# -- variational brackets --------------------------------------------------------------
@pytest.mark.parametrize("rho,dim", [(0.5, 1), (0.9, 1), (0.8, 2)])
def test_gaussian_bracket_contains_true_mi(rho, dim):
    rng = np.random.default_rng(int(rho * 10) + dim)
    n = 7000
    x = rng.standard_normal((n, dim))
    y = rho * x + math.sqrt(1 - rho**2) * rng.standard_normal((n, dim))
    y = 40.0 * y + 150.0  # scale and shift (standardised inside)
    truth = -0.5 * math.log(1 - rho**2) * dim
    b = mi_bracket(x[:4000], y[:4000], x[4000:], y[4000:], discrete=False, cfg=BracketConfig(steps=300))
    assert b.lower <= truth <= b.upper, (truth, b)
    assert b.lower > 0.7 * truth  # and the lower bound is informative, not just 0
    assert b.lower_method == "infonce" and b.consistent


def test_independent_gaussians_bracket_near_zero():
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5000, 3)), rng.standard_normal(5000)
    b = mi_bracket(x[:3000], y[:3000], x[3000:], y[3000:], discrete=False, cfg=BracketConfig(steps=200))
    assert b.lower == 0.0 and b.upper < 0.05


def test_categorical_bracket_contains_code_label_mi(rng):
    # x = codebook vector of a code; the code-label joint is known, so I(x; y) = I(code; label)
    P = np.array([[0.2, 0.05, 0, 0], [0.05, 0.2, 0, 0], [0, 0, 0.15, 0.1], [0, 0, 0.1, 0.15]])
    truth = it.mutual_information(P)
    idx = rng.choice(16, size=8000, p=P.ravel())
    code, label = idx // 4, idx % 4
    table = rng.normal(size=(4, 6))
    b = mi_bracket(table[code[:5000]], label[:5000], table[code[5000:]], label[5000:], discrete=True,
                   cfg=BracketConfig(steps=300), upper_cap=math.log(4))
    assert b.lower <= truth <= b.upper, (truth, b)
    assert b.lower > truth - 0.05
    assert b.upper <= math.log(4) + 1e-9 and b.club >= b.upper


# -- analysis + CLI -----------------------------------------------------------------
@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    p = make_planted_store(tmp_path_factory.mktemp("mi") / "store")
    # Every speaker in both parts: hashed splits can leave one of 6 utterances' speakers out of test.
    u = pd.read_parquet(p / "utterances.parquet")
    u["split_utt"] = np.where(np.arange(len(u)) % 3 == 2, "test", "train")
    u.to_parquet(p / "utterances.parquet", index=False)
    return p


def test_cli_mi_on_planted_store(planted, tmp_path):
    out = tmp_path / "mi"
    rc = main(["mi", "--store", str(planted), "--layers", "1-3", "--targets", "phone,speaker,f0", "--out", str(out),
               "--steps", "200", "--n-shuffles", "4", "--quiet"])
    assert rc == 0
    res = json.loads((out / "result.json").read_text())
    assert res["analysis"] == "mi" and res["summary"]
    for a in res["artifacts"]:
        assert (out / a["path"]).is_file() and a["caption"]
    assert any(a["path"].endswith(".png") for a in res["artifacts"])
    d = pd.read_csv(out / "mi_discrete.csv").set_index(["layer", "target"])
    # layer 1 codes determine the phone: I = H(phone); layer 2 codes determine the speaker: I = H(speaker) = 2 bits
    assert d.loc[(1, "phone"), "mi_plugin_bits"] == pytest.approx(d.loc[(1, "phone"), "h_target_bits"], abs=1e-9)
    assert d.loc[(2, "speaker"), "mi_plugin_bits"] == pytest.approx(2.0, abs=0.01)
    assert d.loc[(2, "f0"), "mi_mm_bits"] > 1.0 and bool(d.loc[(2, "f0"), "binned"])
    for t in ("phone", "speaker", "f0"):  # layer 3 is random: Miller-Madow MI near its shuffled null
        assert abs(d.loc[(3, t), "mi_mm_bits"] - d.loc[(3, t), "shuffle_mm_mean_bits"]) < 0.1
    assert (d["shuffle_mm_mean_bits"].abs() < 0.15).all()
    c = pd.read_csv(out / "mi_club.csv").set_index(["layer", "target"])
    h_phone = d.loc[(1, "phone"), "h_target_bits"]
    assert c.loc[(1, "phone"), "lower_bits"] > 0.9 * h_phone
    assert c.loc[(1, "phone"), "upper_bits"] <= h_phone + 0.01
    assert c.loc[(2, "speaker"), "lower_bits"] > 1.8
    assert c.loc[(3, "phone"), "lower_bits"] < 0.1 and c.loc[(3, "speaker"), "lower_bits"] < 0.1
    assert (c["lower_bits"] <= c["upper_bits"] + 1e-9).all()


def test_cli_mi_discrete_only_and_cumulative(planted, tmp_path):
    out = tmp_path / "mi2"
    assert main(["mi", "--store", str(planted), "--layers", "2", "--targets", "speaker", "--no-club",
                 "--out", str(out), "--quiet"]) == 0
    assert not (out / "mi_club.csv").exists()
    assert len(pd.read_csv(out / "mi_discrete.csv")) == 1
    # cumulative:2 = layer-1 + layer-2 vectors: carries the phone (from layer 1), capped by H(codes 1..2)
    out = tmp_path / "mi3"
    assert main(["mi", "--store", str(planted), "--layers", "2", "--targets", "phone", "--repr", "cumulative",
                 "--steps", "200", "--out", str(out), "--quiet"]) == 0
    c = pd.read_csv(out / "mi_club.csv").iloc[0]
    s = Store(planted)
    assert c["repr"] == "cumulative:2"
    # H(codes 1..2) <= H(codes 1) + H(codes 2): the streamed cap (frames with a phone: all of them here)
    h_sum = sum(it.miller_madow_entropy(np.bincount(np.asarray(s.codes[:, l]))) for l in range(2))
    assert c["h_codes_bits"] == pytest.approx(h_sum / math.log(2))
    assert c["lower_bits"] > 2.5  # H(phone) is ~3.6 bits


def test_resolve_target_kinds(tmp_path, rng):
    from codeclens.analyses.mi import MIConfig, count_targets, resolve_targets
    from codeclens.store.arrays import write_store

    n = 600
    unit = (np.arange(n) % 30).astype(float)  # 30 content units, stored as float because of a gap
    unit[:12] = np.nan
    loud = rng.normal(-30, 6, n)
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(6)], "speaker": ["a", "b"] * 3, "n_frames": 100})
    st = Store(write_store(tmp_path / "st", rng.integers(0, 8, (n, 1)), [rng.normal(size=(8, 4)).astype(np.float32)],
                           utts, pd.DataFrame({"unit": unit, "loudness": loud}), frame_rate=50.0))
    u, lo = resolve_targets(st, ["unit", "loudness"], 16)
    cu, clo = count_targets(st, [1], [u, lo], MIConfig(max_train=1000, max_test=1000))
    assert u.discrete and cu.n_classes == 30 and cu.tables[0].sum() == n - 12  # ids, not 16 quantile bins
    assert not lo.discrete and lo.n_classes == 16 and clo.tables[0].sum() == n
    y = np.concatenate([clo.train["y"], clo.test["y"]])
    assert np.allclose(np.sort(y), np.sort(loud))  # every frame sampled: the bracket sees the real values
    assert clo.tables[0].sum(axis=0).min() >= n // 16 - 1  # quantile bins hold equal shares


def test_mi_bad_input(planted, tmp_path, capsys):
    assert main(["mi", "--store", str(planted), "--targets", "accent", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "no label column 'accent'" in capsys.readouterr().err
    assert main(["mi", "--store", str(planted), "--layers", "4", "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "3 layers" in capsys.readouterr().err
    assert main(["mi", "--store", str(planted), "--repr", "latent", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "repr must be" in err and len(err.strip().splitlines()) == 1


def test_mi_summary_says_when_no_layer_is_above_the_shuffled_baseline(tmp_path, rng):
    """Issue 12 item 10: an MI peak equal to its shuffled baseline is reported as such."""
    from codeclens.store.arrays import write_store

    n = 3000
    unit = rng.integers(0, 12, n)
    unit[::5] = -1  # "no unit": missing, not a class (issue 12 item 4)
    codes = np.stack([rng.integers(0, 64, n), rng.integers(0, 64, n)], axis=1)  # independent of the units
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(30)], "speaker": [f"s{i % 3}" for i in range(30)],
                         "n_frames": 100})
    st = write_store(tmp_path / "st", codes, [rng.normal(size=(64, 4)).astype(np.float32)] * 2, utts,
                     pd.DataFrame({"unit": unit}), frame_rate=50.0)
    out = tmp_path / "mi"
    assert main(["mi", "--store", str(st), "--targets", "unit", "--no-club", "--n-shuffles", "10",
                 "--out", str(out), "--quiet"]) == 0
    d = pd.read_csv(out / "mi_discrete.csv")
    assert (d["n_frames"] == n - 600).all() and (d["n_classes"] == 12).all()
    assert (d["mi_plugin_bits"] > 0.1).all()  # the plug-in bias alone
    assert (d["mi_corrected_bits"].abs() < 0.03).all() and not d["above_null"].any()
    summary = json.loads((out / "result.json").read_text())["summary"]
    assert "no layer above the shuffled-label baseline" in summary


def test_mi_summary_names_the_peak_above_the_null(planted, tmp_path):
    out = tmp_path / "mi"
    assert main(["mi", "--store", str(planted), "--targets", "phone", "--no-club", "--out", str(out), "--quiet"]) == 0
    d = pd.read_csv(out / "mi_discrete.csv").set_index("layer")
    assert d.loc[1, "above_null"] and not d.loc[3, "above_null"]
    summary = json.loads((out / "result.json").read_text())["summary"]
    assert "peaks at layer 1" in summary and "no layer above" not in summary


def test_bracket_sample_vectors_equal_the_store_lookup(planted):
    """The bracket's vectors come from the codes kept with the streamed sample: they must be exactly
    the store's layer:k / cumulative:k vectors of those frames."""
    from codeclens.analyses.mi import MIConfig, _lookup, count_targets, resolve_targets

    s = Store(planted)
    tgts = resolve_targets(s, ["phone", "f0"], 8)
    for cnt in count_targets(s, [1, 2, 3], tgts, MIConfig(max_train=300, max_test=200)):
        for part in (cnt.train, cnt.test):
            assert np.array_equal(_lookup(s, part["codes"], [1, 2, 3], 2, False), s.materialize("layer:2", part["row"]))
            assert np.array_equal(_lookup(s, part["codes"], [1, 2, 3], 3, True),
                                  s.materialize("cumulative:3", part["row"]))
        assert len(cnt.train["row"]) == 300 and len(cnt.test["row"]) == 200
