"""SAE feature steering with a known answer: a hand-built TopK SAE on the toy codec's quantized sum
whose latent 2 carries the pitch layer's value (the decoder uses layer 1 for spectrum, layer 3 for
pitch, ignores layers 2 and 4)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from causal_vector_toy import VectorToyCodec, make_store
from codeclens.analyses.causal import CausalConfig
from codeclens.analyses.causal.steering import choose_latents, steer_delta, steering
from codeclens.analyses.sae.io import save_sae
from codeclens.analyses.sae.model import SAEShape, TopKSAE
from codeclens.cli import main
from codeclens.util.figures import figure_formats


def planted_sae() -> TopKSAE:
    """Latents 0-3 read and write dimension l (layer l + 1's value); latent 4 reads -x_1, which is
    negative on every frame (x_1 >= 1), so it is never active."""
    sae = TopKSAE(SAEShape(4, 5, 5))
    w = torch.zeros(4, 5)
    w[torch.arange(4), torch.arange(4)] = 1.0
    enc = w.t().clone()
    enc[4, 0] = -1.0
    w[0, 4] = 1.0
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(enc)
        sae.b_pre.zero_()
    return sae.eval()


@pytest.fixture(scope="module")
def vtoy(tmp_path_factory):
    return make_store(tmp_path_factory.mktemp("vtoy") / "store")


def test_steer_delta_identity_and_inactive():
    sae = planted_sae()
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 1.0, 8.0, 2.0]])
    d, act = steer_delta(sae, x, [2], 1.0)
    assert torch.equal(d, torch.zeros_like(x)) and act == 1.0
    d, act = steer_delta(sae, x, [4], 0.0)
    assert torch.equal(d, torch.zeros_like(x)) and act == 0.0
    d, _ = steer_delta(sae, x, [2], 0.0)
    assert torch.equal(x + d, torch.tensor([[1.0, 2.0, 0.0, 4.0], [5.0, 1.0, 0.0, 2.0]]))
    d, _ = steer_delta(sae, x, [2], 2.0)
    assert torch.allclose((x + d)[:, 2], 2 * x[:, 2])


def test_steering_known_answer(vtoy, tmp_path, capsys, one_thread):
    sae_dir = save_sae(tmp_path / "sae", planted_sae(), {"repr": "cumulative:4"})
    out = tmp_path / "steer"
    with figure_formats(["png"]):
        rc = main(["causal", "--store", str(vtoy.path), "--out", str(out), "--consumers", "", "--n-utts", "3",
                   "--measures", "f0_kept,loudness", "--interchange-sets", "", "--absent", "", "--max-seconds", "0.4",
                   "--n-boot", "100", "--steer-label", "f0_hz", "--steer-sae", str(sae_dir), "--steer-latents", "1",
                   "--steer-scales", "0,1,2", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    # the latent associated with F0 is the one that carries layer 3 (Spearman rho 1)
    lat = pd.read_csv(out / "steering_latents.csv")
    assert lat["latent"].tolist() == [2] and lat["rho"].iloc[0] > 0.95
    per = pd.read_csv(out / "steering_per_utterance.csv")
    one = per[per["scale"] == 1]
    assert (one[["f0_kept", "loudness"]].to_numpy() == 0).all() and (one["edit_norm"] == 0).all()
    assert (per.loc[per["scale"] == 0, "f0_kept"] < -0.9).all()  # zeroed: F0 leaves the source's
    assert (per.loc[per["scale"] == 2, "f0_kept"] < -0.9).all()
    s = pd.read_csv(out / "steering.csv")
    assert {"ci_low", "ci_high", "p_holm"} <= set(s.columns) and (out / "steering.png").is_file()


def test_unrelated_latents_change_nothing(vtoy, one_thread):
    codec = VectorToyCodec.from_spec(None, "cpu")
    cfg = CausalConfig(consumers=(), measures=("f0_kept", "loudness"), max_seconds=0.4, n_boot=50,
                       steer_label="f0_hz", steer_scales=(0.0,))
    [rep] = vtoy.reprs("cumulative:4")
    rows = np.array([4, 9])
    for j in (4, 1):  # never active; active but on a dimension the decoder ignores
        res = steering(vtoy, codec, cfg, rows, log=lambda *_: None, sae=planted_sae(), rep=rep, latents=[j])
        per = res["steering_per_utterance"]
        assert (per[["f0_kept", "loudness"]].to_numpy() == 0).all()
        assert (per["edit_norm"] == 0).all() == (j == 4)


def test_trained_sae_finds_the_pitch_latents(vtoy, one_thread):
    from codeclens.analyses.causal.steering import load_or_train

    cfg = CausalConfig(consumers=(), steer_label="f0_hz", steer_repr="layer:3", steer_epochs=30)
    sae, rep = load_or_train(vtoy, cfg, "cpu")
    got = choose_latents(sae, vtoy, rep, "f0_hz", 2)
    assert len(got) >= 1 and (got["score"] > 0.5).all()


def test_steering_bad_input(vtoy, tmp_path, capsys):
    base = ["causal", "--store", str(vtoy.path), "--out", str(tmp_path / "x"), "--consumers", "", "--absent", "",
            "--interchange-sets", "", "--n-utts", "2", "--max-seconds", "0.2"]
    assert main(base + ["--steer-label", "nolabel", "--steer-repr", "layer:3", "--steer-epochs", "1"]) == 2
    assert "no label 'nolabel' to steer" in capsys.readouterr().err
    assert main(base + ["--steer-label", "f0_hz", "--steer-repr", "latent"]) == 2
    assert "layer:k or cumulative:k" in capsys.readouterr().err
