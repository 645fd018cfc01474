"""Token association, PNMI and codebook usage: known answers on planted stores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses import infotheory as it
from codeclens.cli import main
from codeclens.errors import CodeclensError
from codeclens.store.arrays import write_store

PHONES = ["ɑ", "i", "u", "ɛ", "p", "t", "k", "s", "f", "m", "n", "sil"]  # canonical IPA inventory symbols
CLASS = ["vowel"] * 4 + ["stop"] * 3 + ["fricative"] * 2 + ["nasal"] * 2 + ["silence"]
VOICED = {"ɑ", "i", "u", "ɛ", "m", "n"}
SPEAKER_F0 = [100.0, 140.0, 190.0, 240.0]


def make_planted_store(path: Path, seed: int = 0, n_utt: int = 24, frames: int = 100, K: int = 32) -> Path:
    """A store whose layers carry known things.

    layer 1: code = phone id (+ 12 half of the time): deterministic code -> phone;
    layer 2: code = 8 * speaker + F0 deviation bin: carries speaker and F0, not phone;
    layer 3: uniform random codes: carries nothing.
    Phones run in segments of 3-7 frames; F0 is NaN on unvoiced phones. Layer 1's
    table places each code near the centroid of its phone's class; others are random.
    """
    rng = np.random.default_rng(seed)
    n = n_utt * frames
    spk = np.repeat(np.arange(n_utt) % 4, frames)
    phone_ids = np.concatenate([np.repeat(rng.integers(0, len(PHONES), 40), rng.integers(3, 8, 40))[:frames]
                                for _ in range(n_utt)])
    phones = np.array(PHONES, dtype=object)[phone_ids]
    voiced = np.array([p in VOICED for p in phones])
    dev = rng.normal(0, 1, n)
    f0 = np.array(SPEAKER_F0)[spk] * np.exp(0.08 * dev)
    f0 = np.where(voiced, f0, np.nan)
    dev_bin = np.clip(np.floor((dev + 2) * 2), 0, 7).astype(int)
    codes = np.stack([
        phone_ids + 12 * rng.integers(0, 2, n),
        8 * spk + dev_bin,
        rng.integers(0, K, n),
    ], axis=1)
    tables = [rng.normal(size=(K, 8)).astype(np.float32) for _ in range(3)]
    centroids = {c: 6.0 * rng.normal(size=8) for c in set(CLASS)}
    tables[0][:24] = np.stack([centroids[CLASS[c % 12]] for c in range(24)]) + rng.normal(size=(24, 8))
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(n_utt)], "speaker": [f"spk{i % 4}" for i in range(n_utt)],
                         "n_frames": frames})
    fr = pd.DataFrame({"phone": phones, "f0_hz": f0, "voiced": voiced})
    return write_store(path, codes, tables, utts, fr, frame_rate=50.0)


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return make_planted_store(tmp_path_factory.mktemp("planted") / "store")


# -- pure functions -------------------------------------------------------------------
def test_deterministic_mapping_gives_full_association_and_pnmi_one(rng):
    labels = rng.integers(0, 10, 5000)
    codes = labels * 3 + rng.integers(0, 3, 5000)  # every code belongs to exactly one label
    c = it.cooccurrence(codes, labels, 30, 10)
    assert it.top1_association(c) == pytest.approx(100.0)
    assert it.top1_association(c, weighted=True) == pytest.approx(100.0)
    assert it.label_purity(c) == pytest.approx(1.0)
    assert it.pnmi(c) == pytest.approx(1.0)
    assert it.conditional_entropy(c) == pytest.approx(0.0, abs=1e-12)
    curve = it.ranked_association(c)
    assert curve[0] == pytest.approx(100.0) and np.allclose(curve[1:], 0.0)


def test_independent_codes_give_pnmi_near_zero(rng):
    labels = rng.integers(0, 10, 200_000)
    codes = rng.integers(0, 16, 200_000)
    c = it.cooccurrence(codes, labels, 16, 10)
    assert it.pnmi(c) < 0.002
    # each code's top label holds ~10% of its frames (a bit more from sampling noise), never 100%
    assert 10.0 <= it.top1_association(c) < 11.5
    assert it.ranked_association(c).sum() == pytest.approx(100.0)


def test_pnmi_and_conditional_entropy_of_a_noisy_channel():
    # codes = labels through a binary symmetric channel with crossover 0.2, uniform labels:
    # I = ln 2 - h(0.2), H(label) = ln 2, H(label | code) = h(0.2)
    c = np.array([[40, 10], [10, 40]])
    h = -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))
    assert it.pnmi(c) == pytest.approx((np.log(2) - h) / np.log(2))
    assert it.pnmi(c.T) == pytest.approx(it.pnmi(c))  # symmetric table: same either way round
    assert it.conditional_entropy(c) == pytest.approx(h)
    assert it.ranked_association(c) == pytest.approx([80.0, 20.0])
    assert it.label_purity(c) == pytest.approx(0.8)
    # PNMI normalises by H(label), not H(code): 4 codes splitting 2 labels deterministically give 1
    assert it.pnmi(np.array([[10, 0], [10, 0], [0, 10], [0, 10]])) == pytest.approx(1.0)
    assert it.pnmi(np.array([[10, 0], [10, 0], [0, 10], [0, 10]]).T) == pytest.approx(0.5)
    # Miller-Madow: + (occupied bins - 1) / 2N
    assert it.miller_madow_entropy(np.array([5, 5, 0])) == pytest.approx(np.log(2) + 1 / 20)


def test_ranked_association_weighting_known_table():
    # code 0: 90 frames, 90/10 split; code 1: 10 frames, 50/50 split; code 2 unused
    c = np.array([[81, 9], [5, 5], [0, 0]])
    w = it.ranked_association(c, weighted=True)
    u = it.ranked_association(c, weighted=False)
    assert w == pytest.approx([100 * (81 + 5) / 100, 100 * (9 + 5) / 100])
    assert u == pytest.approx([100 * (0.9 + 0.5) / 2, 100 * (0.1 + 0.5) / 2])
    assert it.label_purity(c) == pytest.approx(0.86)
    assert it.code_purity(c) == pytest.approx(0.9)


def test_perplexity_and_dead_codes_exact():
    assert it.perplexity(np.full(64, 7)) == pytest.approx(64.0)
    assert it.perplexity(np.array([5, 0, 0, 0])) == pytest.approx(1.0)
    usage = np.zeros(100)
    usage[:37] = 3
    assert it.dead_fraction(usage) == pytest.approx(0.63)
    assert it.perplexity(usage) == pytest.approx(37.0)


def test_encode_labels_drops_missing():
    keep, ids, classes = it.encode_labels(np.array(["a", None, "b", "", float("nan"), "a"], dtype=object))
    assert keep.tolist() == [True, False, True, False, False, True]
    assert classes.tolist() == ["a", "b"] and ids.tolist() == [0, 1, 0]


# -- analysis + CLI ---------------------------------------------------------------------
def test_cli_tokens_on_planted_store(planted, tmp_path):
    out = tmp_path / "tokens"
    assert main(["tokens", "--store", str(planted), "--label", "unit", "--layers", "1-3", "--out", str(out),
                 "--quiet"]) == 0
    res = json.loads((out / "result.json").read_text())
    assert res["analysis"] == "tokens"
    for a in res["artifacts"]:
        assert (out / a["path"]).is_file() and a["caption"]
    assert {a["kind"] for a in res["artifacts"]} == {"table", "figure"}
    m = pd.read_csv(out / "token_metrics.csv").set_index("layer")
    assert (m["label"] == "phone").all()  # no unit column: phones serve as units
    assert m.loc[1, "top1_pct"] == pytest.approx(100.0) and m.loc[1, "pnmi_raw"] == pytest.approx(1.0)
    assert m.loc[1, "pnmi_corrected"] == pytest.approx(1.0)  # adjusted for chance: determined stays 1
    assert m.loc[3, "pnmi_raw"] < 0.05 and m.loc[2, "pnmi_raw"] < 0.05
    assert abs(m.loc[3, "pnmi_corrected"]) < 0.01 and not m.loc[3, "above_null"] and m.loc[1, "above_null"]
    assert m.loc[3, "top1_pct"] == pytest.approx(m.loc[3, "top1_null_pct"], abs=3.0)
    assert m.loc[1, "dead_fraction"] == pytest.approx(8 / 32)  # codes 24..31 never occur
    cooc = pd.read_parquet(out / "cooccurrence.parquet")
    assert cooc.groupby("layer")["count"].sum().tolist() == [2400, 2400, 2400]
    curve = pd.read_csv(out / "association_curve.csv")
    assert curve.groupby("layer")["weighted_pct"].sum().round(6).tolist() == [100.0, 100.0, 100.0]


def test_cli_tokens_speaker_label_and_two_stores(planted, tmp_path):
    other = make_planted_store(tmp_path / "other", seed=1)
    out = tmp_path / "spk"
    assert main(["tokens", "--store", str(planted), "--store", str(other), "--label", "speaker", "--out",
                 str(out), "--quiet", "--no-save-cooccurrence"]) == 0
    m = pd.read_csv(out / "token_metrics.csv")
    assert set(m["store"]) == {"store", "other"}
    l2 = m[m["layer"] == 2]
    assert np.allclose(l2["pnmi_raw"], 1.0)  # layer 2 codes are nested in speakers


def test_bad_input_is_one_line_error(planted, tmp_path, capsys):
    assert main(["tokens", "--store", str(planted), "--label", "accent", "--out", str(tmp_path / "a")]) == 2
    assert "no label column 'accent'" in capsys.readouterr().err
    assert main(["tokens", "--store", str(planted), "--layers", "1-9", "--out", str(tmp_path / "b")]) == 2
    assert "codec has 3 layers" in capsys.readouterr().err
    assert main(["tokens", "--store", str(planted), "--label", "f0_hz", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert "'f0_hz' is real-valued" in err and len(err.strip().splitlines()) == 1
    from codeclens.analyses.tokens import parse_layers

    with pytest.raises(CodeclensError):
        parse_layers("2-1", 8)
    assert parse_layers("1,3-4", 8) == [1, 3, 4]


# -- nulls, bias correction, missing labels, streaming -------------------------------------
def test_null_tables_keep_margins_and_match_frame_permutations(rng):
    codes, labels = rng.integers(0, 50, 3000), rng.integers(0, 7, 3000)
    labels[codes < 5] = 0  # some dependence: the null must remove it
    c = it.cooccurrence(codes, labels, 64, 7)
    tables = list(it.null_tables(c, 40, seed=1))
    for t in tables:
        assert (t.sum(axis=0) == c.sum(axis=0)).all() and (t.sum(axis=1) == c.sum(axis=1)).all()
    by_table = np.mean([it.mutual_information(t) for t in tables])
    by_frames = it.shuffled_mi(codes, labels, 64, 7, n_shuffles=40, miller_madow=False).mean()
    assert by_table == pytest.approx(by_frames, rel=0.05)
    assert it.mutual_information(c) > 3 * by_table
    assert [t.tolist() for t in it.null_tables(c, 2, seed=3)] == [t.tolist() for t in it.null_tables(c, 2, seed=3)]


@pytest.mark.parametrize("n", [5000, 20000, 100000])
def test_corrected_pnmi_of_independent_codes_is_zero_at_any_size(n):
    """Issue 12 item 5: 1024 codes x 40 labels, independent: raw plug-in PNMI is large, corrected ~0."""
    from codeclens.analyses.tokens import layer_token_stats

    rng = np.random.default_rng(n)
    st = layer_token_stats(it.cooccurrence(rng.integers(0, 1024, n), rng.integers(0, 40, n), 1024, 40), 1,
                           min_count=10, n_shuffles=10)
    if n == 20000:
        assert st.pnmi_raw > 0.14
    assert abs(st.pnmi_corrected) < 0.01 and not st.above_null
    assert abs(st.top1_pct - st.top1_null_pct) < 1.5
    # a planted dependent layer (25 codes per label, 30% random codes) keeps its large-sample PNMI
    lab = rng.integers(0, 40, n)
    code = np.where(rng.random(n) < 0.3, rng.integers(0, 1000, n), lab * 25 + rng.integers(0, 25, n))
    dep = layer_token_stats(it.cooccurrence(code, lab, 1024, 40), 1, min_count=10, n_shuffles=10)
    assert dep.above_null and dep.pnmi_corrected == pytest.approx(0.546, abs=0.06)  # 0.546: plug-in at 4M frames


def test_min_count_keeps_rare_codes_out_of_top1():
    c = np.array([[50, 50], [1, 0], [0, 1], [1, 0]])  # three codes seen once: 100% "associated" each
    assert it.top1_association(c) == pytest.approx((50 + 100 * 3) / 4)
    assert it.top1_association(c, min_count=10) == pytest.approx(50.0)
    assert np.isnan(it.top1_association(c, min_count=1000))


def test_no_unit_label_minus_one_is_missing(tmp_path, rng):
    """Issue 12 item 4: unit -1 ("no unit") is dropped, not a class, in tokens (and the encoders)."""
    n = 400
    unit = rng.integers(0, 5, n)
    unit[::4] = -1
    codes = np.where(unit >= 0, unit, rng.integers(0, 8, n))  # codes determine the unit where there is one
    utts = pd.DataFrame({"id": ["a", "b"], "speaker": ["s", "t"], "n_frames": [200, 200]})
    st = write_store(tmp_path / "st", codes[:, None], [rng.normal(size=(8, 4)).astype(np.float32)], utts,
                     pd.DataFrame({"unit": unit}), frame_rate=50.0)
    keep, _, classes = it.encode_labels(unit)
    assert keep.sum() == 300 and -1 not in classes.tolist()
    keep, _, classes = it.encode_labels(np.where(unit >= 0, unit, np.nan) * 1.0)
    assert keep.sum() == 300
    keep, _, classes = it.encode_labels(np.array([1, -1, None, "x"], dtype=object))
    assert keep.tolist() == [True, False, False, True]
    out = tmp_path / "tok"
    assert main(["tokens", "--store", str(st), "--out", str(out), "--quiet", "--n-shuffles", "3"]) == 0
    m = pd.read_csv(out / "token_metrics.csv").iloc[0]
    assert m["n_frames"] == 300 and m["n_labels"] == 5 and m["pnmi_raw"] == pytest.approx(1.0)
    assert set(pd.read_parquet(out / "cooccurrence.parquet")["label"]) == {"0", "1", "2", "3", "4"}


def test_streamed_counts_equal_in_memory_counts(planted, tmp_path):
    from codeclens.analyses import framestream as fs
    from codeclens.store import Store

    s = Store(planted)
    for col in ("phone", "speaker"):
        tables, classes = fs.count_codes_by_label(s, [1, 2, 3], col, chunk=97)  # chunks cross utterances
        keep, ids, cls = it.encode_labels(s.frame_column(col))
        assert classes.tolist() == cls.tolist()
        for layer, t in zip([1, 2, 3], tables):
            ref = it.cooccurrence(np.asarray(s.codes[:, layer - 1])[keep], ids, 32, len(cls))
            assert (t == ref).all()
    with pytest.raises(CodeclensError, match="real-valued"):
        fs.count_codes_by_label(s, [1], "f0_hz", chunk=500)
