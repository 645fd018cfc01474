"""Causal analysis: Shapley values with known answers, patching, consumers, and a decoder whose
layers have known roles (layer 1 spectrum, layer 3 pitch, layers 2 and 4 ignored)."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.causal import effects as E
from codeclens.analyses.causal.patching import ABSENT, aligned, mean_codes, patch
from codeclens.analyses.causal.shapley import (exact_shapley, interaction_indices, mask_layers,
                                               sampled_shapley)
from codeclens.cli import main
from codeclens.store import Store
from codeclens.store.arrays import write_store


def test_shapley_known_games():
    n = 4
    a = np.array([0.5, -1.0, 2.0, 0.25])
    additive = lambda m: a[mask_layers(m, n)].sum()
    assert np.allclose(exact_shapley(additive, n), a)
    assert np.allclose(interaction_indices(additive, n), 0)
    # a game that ignores layer 2 (0-based) gives it exactly zero; values sum to v(all) - v(none)
    rng = np.random.default_rng(0)
    base = rng.normal(size=1 << n)
    ignore2 = lambda m: base[m & ~(1 << 2)]
    phi = exact_shapley(ignore2, n)
    assert phi[2] == 0.0
    assert np.isclose(phi.sum(), ignore2((1 << n) - 1) - ignore2(0))
    # layers 0 and 1 only work together: split the surplus, interaction = the surplus
    joint = lambda m: float(m & 0b11 == 0b11)
    phi = exact_shapley(joint, n)
    assert np.allclose(phi, [0.5, 0.5, 0, 0])
    ii = interaction_indices(joint, n)
    assert np.isclose(ii[0, 1], 1.0) and np.isclose(ii[2, 3], 0) and np.isclose(ii[0, 2], 0)
    # vector-valued games attribute every entry at once
    vec = lambda m: np.array([additive(m), joint(m)])
    assert np.allclose(exact_shapley(vec, n)[:, 0], a)


def test_sampled_shapley_matches_exact_within_its_error():
    n = 6
    rng = np.random.default_rng(1)
    table = rng.normal(size=1 << n)
    v = lambda m: table[m]
    exact = exact_shapley(v, n)
    s = sampled_shapley(v, n, n_permutations=400, seed=0)
    assert np.all(np.abs(s.phi - exact) < 5 * s.se + 1e-9)
    assert s.masks_evaluated <= 1 << n
    add = sampled_shapley(lambda m: float(len(mask_layers(m, n))), n, 4)
    assert np.allclose(add.phi, 1.0) and np.allclose(add.se, 0)


def test_patching():
    codes = np.arange(12).reshape(6, 2) % 4
    assert (patch(codes, [1], "drop")[:, 1] == ABSENT).all() and (patch(codes, [1], "drop")[:, 0] == codes[:, 0]).all()
    donor = np.array([[3, 3], [2, 2]])
    sw = patch(codes, [0], "swap", donor=donor)
    assert (sw[:, 0] == [3, 2, 3, 2, 3, 2]).all() and (sw[:, 1] == codes[:, 1]).all()
    fr = np.zeros(6, bool)
    fr[2] = True
    one = patch(codes, [0], "drop", frames=fr)
    assert (one[:, 0] == np.where(fr, ABSENT, codes[:, 0])).all()
    # the mean code is the one nearest the expected table vector
    tabs = [np.array([[0.0], [1.0], [10.0]]), np.array([[0.0], [1.0], [2.0]])]
    c = np.array([[0, 0], [0, 1], [1, 2], [1, 2]])
    assert list(mean_codes(c, tabs)) == [0, 1]  # E = 0.5 -> code 0 or 1 (tie -> first); E = 1.25 -> code 1
    assert aligned(donor, 5).shape == (5, 2)


def test_effects():
    a = np.log(np.array([[0.7, 0.3], [0.2, 0.8]]))
    assert E.effect(a, a, [2], 2) == {"flip_rate": 0.0, "kl": 0.0, "delta_logp": 0.0}
    b = a[:, ::-1]
    m = E.effect(a, b, [2], 2)
    assert m["flip_rate"] == 1.0 and m["kl"] > 0 and m["delta_logp"] < 0


@pytest.fixture(scope="module")
def toy_store(tmp_path_factory):
    """Utterances of the toy codec: 10 speakers x 2 sentences (8 held-out speakers, so a
    speaker-clustered sign-flip test can reach p < 0.05 after Holm), random codes; layer-1 and
    layer-3 codes constant within short segments."""
    rng = np.random.default_rng(0)
    rows, codes = [], []
    for s in range(10):
        for sent in range(2):
            n = 40
            c = rng.integers(0, 8, size=(n, 4))
            c[:, 0] = np.repeat(rng.integers(0, 8, size=n // 10), 10)
            c[:, 2] = np.repeat(rng.integers(0, 8, size=n // 10), 10)
            codes.append(c)
            rows.append({"id": f"s{s}_{sent}", "speaker": f"s{s}", "sentence": sent, "accent": f"a{s % 2}", "n_frames": n})
    u = pd.DataFrame(rows)
    u["split_spk"] = ["train" if r["speaker"] in ("s0", "s1") else "test" for r in rows]
    u["split_utt"] = "test"
    path = tmp_path_factory.mktemp("toy") / "store"
    tabs = [np.eye(8, 4, dtype=np.float32) * (l + 1) for l in range(4)]
    write_store(path, np.concatenate(codes), tabs, u, codec_spec="python:causal_toy:PitchSpectrumCodec", name="toy",
                sample_rate=16000)
    return Store(path)


def test_decoder_attribution_knows_the_roles(toy_store, tmp_path, capsys):
    out = tmp_path / "causal"
    rc = main(["causal", "--store", str(toy_store.path), "--out", str(out), "--consumers",
               "python:causal_toy:FirstLayerConsumer", "--n-utts", "8", "--measures", "f0_kept",
               "--absent", "drop", "--interchange-sets", "single", "--max-seconds", "0.5", "--n-boot", "200",
               "--offsets", "0", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    per = pd.read_csv(out / "decoder_shapley_per_utterance.csv")
    # ignored layers 2 and 4: exactly zero, for every measure, absent value and utterance
    assert (per.loc[per["layer"].isin([2, 4]), "shapley"] == 0).all()
    # efficiency: per utterance, the values sum to v(all) - v(none)
    for _, g in per.groupby(["absent", "measure", "utt"]):
        assert np.isclose(g["shapley"].sum(), g["full_minus_empty"].iloc[0], atol=1e-9)
    # pitch is caused by layer 3, not layer 1
    d = pd.read_csv(out / "decoder_shapley.csv")
    f0 = d[(d["measure"] == "f0_kept") & (d["absent"] == "drop")].set_index("layer")
    assert f0.loc[3, "value"] > 0.3 and f0.loc[3, "value"] > 5 * abs(f0.loc[1, "value"])
    # interchange: swapping layer 3 makes pitch follow the donor and leaves the spectrum with the source
    ic = pd.read_csv(out / "interchange.csv", dtype={"layers": str}).set_index("layers")
    assert ic.loc["3", "f0_follows_donor"] > 0.9
    assert ic.loc["3", "spectrum_follows_donor"] == 0.0 and ic.loc["1", "spectrum_follows_donor"] == 1.0
    assert ic.loc["2", "f0_follows_donor"] < 0.2
    assert ic["donor_match"].str.startswith("same sentence").all()
    # the consumer never reads layers 2-4: exactly zero effect and zero Shapley value there
    ce = pd.read_csv(out / "consumer_effects.csv")
    assert (ce.loc[ce["layer"] > 1, "value"] == 0).all()
    assert (ce.loc[(ce["layer"] == 1) & (ce["measure"] == "kl"), "value"] > 0).all()
    cs = pd.read_csv(out / "consumer_shapley.csv").set_index("layer")
    assert (cs.loc[[2, 3, 4], "value"] == 0).all()
    assert (out / "decoder_shapley.png").is_file() and (out / "decoder_shapley.pdf").is_file()
    summary = capsys.readouterr().out
    assert "toy: f0_kept (absent=drop) is caused most by layer 3" in summary


def test_token_lm_is_causal_and_learns(toy_store, tmp_path):
    from codeclens.analyses.causal.consumers import as_batch
    from codeclens.analyses.causal.tokenlm import TokenLMConsumer

    lm = TokenLMConsumer(toy_store, steps=150, dim=32, depth=1)
    codes = np.asarray(toy_store.codes[:40], dtype=np.int64)  # the first utterance
    X, n = as_batch([codes, patch(codes, [0], "drop", frames=np.arange(40) == 20)])
    out = lm.score(X, n)
    kl = E.kl_per_frame(out[0], out[1], lm.groups)
    assert np.all(kl[:20] < 1e-6) and kl[20:].max() > 1e-3  # nothing before the patched frame moves
    # layer 1 and 3 codes repeat in runs of 10: the LM predicts them far above chance
    logp = np.split(out[0], np.cumsum(lm.groups)[:-1], axis=-1)
    nxt = codes[1:, 0]
    acc = np.mean(np.argmax(logp[0][:-1], -1) == nxt)
    assert acc > 0.6  # chance 1/8


def test_bad_config_is_one_line(toy_store, tmp_path, capsys):
    assert main(["causal", "--store", str(toy_store.path), "--out", str(tmp_path / "x"), "--modes", "nope"]) == 2
    assert "unknown mode" in capsys.readouterr().err
    assert main(["causal", "--store", str(toy_store.path), "--out", str(tmp_path / "x"), "--consumers", "nolabel",
                 "--no-decoder"]) == 2
    assert "no label 'nolabel'" in capsys.readouterr().err


def test_token_classifier_log_probabilities_are_finite_and_match_sklearn():
    """Log-probabilities come from the logits: equal to sklearn's where its probabilities are
    representable, finite where they underflow (sklearn's own log gives -inf there)."""
    from sklearn.linear_model import LogisticRegression

    from codeclens.analyses.causal.consumers import TokenClassifier

    rng = np.random.default_rng(0)
    for n_classes in (2, 3):
        X = rng.normal(size=(300, 4))
        y = np.argmax(X[:, :n_classes], axis=1)
        tc = TokenClassifier.__new__(TokenClassifier)
        tc.mu, tc.sd = np.zeros(4), np.ones(4)
        tc.model = LogisticRegression(C=1e4, max_iter=500).fit(X, y)
        ok = X[:20] * 0.01
        np.testing.assert_allclose(tc._log_proba(ok), tc.model.predict_log_proba(ok), rtol=1e-6, atol=1e-9)
        far = X[:20] * 1e3  # probabilities underflow to 0
        with np.errstate(divide="ignore"):
            assert np.isinf(tc.model.predict_log_proba(far)).any()
        lp = tc._log_proba(far)
        assert np.isfinite(lp).all() and np.allclose(np.exp(lp).sum(1), 1.0)
