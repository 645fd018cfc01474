"""MLP probes (``--mlp``) on stores with known answers: non-linear labels of a 2-D latent."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.cli import main
from codeclens.store.arrays import write_store

MLP = dict(mlp=True, mlp_hidden=64, mlp_epochs=30, bootstrap=200)


@pytest.fixture(scope="module")
def latent2d(tmp_path_factory):
    """Latent = (x1, x2, two noise dims), x uniform in [-1, 1]^2; codes carry nothing.

    xor: sign(x1) == sign(x2) (no linear reader beats chance; a small MLP is near perfect);
    lin: sign(x1 + noise) (linear; the Bayes rule is linear, so both probes should tie);
    prod: x1 * x2 (R^2 of the best linear reader is 0).
    """
    rng = np.random.default_rng(0)
    n_utt, T = 40, 50
    N = n_utt * T
    x = rng.uniform(-1, 1, size=(N, 2))
    lat = np.concatenate([x, 0.3 * rng.normal(size=(N, 2))], 1)
    utts = pd.DataFrame({"id": [f"u{i:03d}" for i in range(n_utt)], "speaker": [f"s{i % 10}" for i in range(n_utt)],
                         "n_frames": T})
    frames = pd.DataFrame({
        "xor": np.where(x[:, 0] * x[:, 1] > 0, "same", "diff"),
        "lin": np.where(x[:, 0] + 0.3 * rng.normal(size=N) > 0, "pos", "neg"),
        "prod": x[:, 0] * x[:, 1] + 0.02 * rng.normal(size=N),
    })
    codes = rng.integers(0, 8, size=(N, 1))
    tables = [rng.normal(size=(8, 4)).astype(np.float32)]
    return write_store(tmp_path_factory.mktemp("nl") / "s", codes, tables, utts, frames, latent=lat, seed=0, name="nl")


@pytest.fixture(scope="module")
def results(latent2d):
    return run_probes([latent2d], ProbeConfig(task=("xor", "lin", "prod"), repr="latent", control="code", **MLP))


def _row(df, **kw):
    d = df
    for k, v in kw.items():
        d = d[d[k] == v]
    assert len(d) == 1, (kw, len(d))
    return d.iloc[0]


def test_xor_is_read_by_the_mlp_not_the_linear_probe(results):
    lin = _row(results, task="xor", probe="linear", metric="accuracy")
    mlp = _row(results, task="xor", probe="mlp", metric="accuracy")
    assert lin["ci_low"] <= 0.5 <= lin["ci_high"] and lin["value"] < 0.58, lin.to_dict()
    assert mlp["value"] > 0.9 and mlp["ci_low"] > 0.85, mlp.to_dict()
    assert mlp["ci_low"] <= mlp["value"] <= mlp["ci_high"]
    assert mlp["chance_majority"] == lin["chance_majority"] and mlp["n_test"] == lin["n_test"]
    assert mlp["l2"] in MLP_GRID and mlp["backend"] == "torch"
    # The codes carry nothing about x, so the control labels (a random label per code) are unreadable from
    # the latent: the MLP's control sits at chance, and its selectivity is its whole gain over chance.
    ctrl = _row(results, task="xor", probe="mlp_control", metric="accuracy")
    assert ctrl["value"] < 0.6, ctrl.to_dict()
    sel = _row(results, task="xor", probe="mlp_selectivity", metric="accuracy")
    assert sel["ci_low"] > 0.3, sel.to_dict()
    assert abs(_row(results, task="xor", probe="selectivity", metric="accuracy")["value"]) < 0.1


MLP_GRID = ProbeConfig().mlp_weight_decay


def test_linear_signal_mlp_matches_linear(results):
    lin = _row(results, task="lin", probe="linear", metric="accuracy")["value"]
    mlp = _row(results, task="lin", probe="mlp", metric="accuracy")["value"]
    assert lin > 0.8 and abs(mlp - lin) < 0.04, (lin, mlp)
    lf = _row(results, task="lin", probe="linear", metric="macro_f1")["value"]
    mf = _row(results, task="lin", probe="mlp", metric="macro_f1")["value"]
    assert abs(mf - lf) < 0.04, (lf, mf)


def test_product_regression(results):
    lin = _row(results, task="prod", probe="linear", metric="r2")
    mlp = _row(results, task="prod", probe="mlp", metric="r2")
    assert abs(lin["value"]) < 0.05 and mlp["value"] > 0.9, (lin["value"], mlp["value"])
    assert _row(results, task="prod", probe="mlp", metric="mae")["value"] < 0.5 * _row(
        results, task="prod", probe="linear", metric="mae")["value"]
    assert _row(results, task="prod", probe="mlp_selectivity", metric="r2")["ci_low"] > 0.8


def test_same_seed_same_result_and_off_by_default(latent2d):
    cfg = ProbeConfig(task=("prod", "xor"), repr="latent", control="none", **{**MLP, "mlp_epochs": 3})
    a, b = run_probes([latent2d], cfg), run_probes([latent2d], cfg)
    pd.testing.assert_frame_equal(a, b)
    from dataclasses import replace

    c = run_probes([latent2d], replace(cfg, seed=5))
    mlp = (a.probe == "mlp") & (a.metric == "r2")
    assert a.loc[mlp, "value"].item() != c.loc[mlp, "value"].item()  # the seed reaches initialisation/minibatches
    off = run_probes([latent2d], ProbeConfig(task=("xor",), repr="latent", control="none", bootstrap=0))
    assert not ProbeConfig().mlp and set(off["probe"]) == {"linear"}


def test_config_validation():
    for bad in (dict(mlp_hidden=0), dict(mlp_epochs=0), dict(mlp_weight_decay=()), dict(mlp_weight_decay=(-1.0,))):
        with pytest.raises(ValueError):
            ProbeConfig(**bad)


def test_cli_mlp_end_to_end(tmp_path, capsys):
    """Planted store: layer 1 carries phone through its codes (count-table path for the linear probe)."""
    from codeclens.analyses.probes.synthetic import planted_store

    store = planted_store(tmp_path / "s", n_utt=30, seed=0)
    out = tmp_path / "o"
    argv = ["probe", "--store", str(store), "--task", "phone", "--repr", "layer:1,layer:2", "--out", str(out),
            "--quiet", "--bootstrap", "50", "--mlp", "--mlp-hidden", "32", "--mlp-weight-decay", "1e-4,1e-3",
            "--mlp-epochs", "10"]
    assert main(argv) == 0
    df = pd.read_csv(out / "probes.csv")
    mlp = df[(df.probe == "mlp") & (df.metric == "accuracy")].set_index("representation")
    assert list(mlp.index) == ["layer:1", "layer:2"]
    # Layer 2 carries speaker, not phone: the MLP stays near chance (8 phones) there.
    assert mlp.loc["layer:1", "value"] > 0.8 and mlp.loc["layer:2", "value"] < 0.35, mlp["value"].to_dict()
    assert set(mlp["l2"]) <= {1e-4, 1e-3}
    assert {"mlp_control", "mlp_selectivity"} <= set(df["probe"])
    assert json.loads((out / "config.json").read_text())["mlp"] is True
    rc = main(["probe", "--store", str(store), "--out", str(tmp_path / "bad"), "--quiet", "--mlp",
               "--mlp-weight-decay", "-1"])
    err = capsys.readouterr().err
    assert rc == 2 and "mlp_weight_decay" in err and err.count("\n") == 1, err
