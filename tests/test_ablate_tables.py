"""ablate: effect tables, layer roles, voice conversion and summary checks from planted per-utterance results."""

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.ablate.summary import Checks, run_checks, summary_sentences
from codeclens.analyses.ablate.tables import effect_table, fmt, layer_contrasts, layer_roles, voice_conversion_table, wide_table


def _rows(n=12, seed=0, speakers=None):
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n):
        spk = {} if speakers is None else {"speaker": f"s{u % speakers}"}
        rows.append(dict(utt=u, **spk, kind="none", intervention="none", layers="1-3", layer=None, spk_sim=1.0, stoi=1.0,
                         f0_rmse_cents=0.0, phone_acc=0.8, phone_chance=0.2))
        rows.append(dict(utt=u, **spk, kind="reference", intervention="other speaker", layers="", layer=None, spk_sim=0.6))
        # Planted roles: layer 2 carries the speaker, layer 3 the pitch, layer 1 the content.
        for k, (sim, cents, acc) in {1: (0.95, 20, 0.3), 2: (0.7, 30, 0.75), 3: (0.93, 300, 0.78)}.items():
            rows.append(dict(utt=u, **spk, kind="drop", intervention=f"drop {k}", layers=str(k), layer=k,
                             spk_sim=sim + 0.01 * rng.standard_normal(), stoi=0.9,
                             f0_rmse_cents=cents + rng.standard_normal(), phone_acc=acc))
            rows.append(dict(utt=u, **spk, kind="only", intervention=f"only {k}", layers=str(k), layer=k,
                             spk_sim=1.6 - sim, stoi=0.5, f0_rmse_cents=400 - cents, phone_acc=0.85 - acc))
        # Swap of every layer: the donor itself. Swap 2: donor-like but content gone. Swap 2-3: both.
        rows.append(dict(utt=u, **spk, kind="swap", intervention="swap 1-3", layers="1-3", layer=None, spk_sim=0.6,
                         spk_sim_donor=1.0, stoi=0.3, phone_acc=0.8))
        rows.append(dict(utt=u, **spk, kind="swap", intervention="swap 2", layers="2", layer=2, spk_sim=0.62,
                         spk_sim_donor=0.95, stoi=0.3, phone_acc=0.1))
        rows.append(dict(utt=u, **spk, kind="swap", intervention="swap 2-3", layers="2-3", layer=None, spk_sim=0.65,
                         spk_sim_donor=0.9, stoi=0.8, phone_acc=0.6))
    return pd.DataFrame(rows)


@pytest.fixture
def per_utt():
    return _rows()


def test_effect_table_means_cis_and_paired_differences(per_utt):
    eff = effect_table(per_utt, n_boot=200, seed=0)
    r = eff[(eff["intervention"] == "drop 3") & (eff["measure"] == "f0_rmse_cents")].iloc[0]
    assert r["n"] == 12 and r["n_undefined"] == 0 and r["ci_lo"] < r["mean"] < r["ci_hi"] and abs(r["mean"] - 300) < 1.5
    # Paired against the unedited decode (0 cents): the difference is the value itself.
    assert r["diff"] == pytest.approx(r["mean"]) and r["diff_lo"] > 250
    # 12 utterances, each its own cluster (no speaker column): exact sign flips, smallest p = 2 / 2^12.
    assert r["p"] == pytest.approx(2 / 2 ** 12)
    assert r["p_holm"] >= r["p"] and (eff["p_holm"].dropna() <= 1).all()
    const = eff[(eff["intervention"] == "drop 1") & (eff["measure"] == "stoi")].iloc[0]
    assert const["ci_lo"] == const["mean"] == const["ci_hi"] == pytest.approx(0.9)
    assert const["diff"] == pytest.approx(-0.1)
    # Similarity to the donor is paired with the unedited source's similarity to that donor (0.6).
    d = eff[(eff["intervention"] == "swap 2-3") & (eff["measure"] == "spk_sim_donor")].iloc[0]
    assert d["diff"] == pytest.approx(0.3)
    w = wide_table(eff)
    assert list(w["intervention"][:3]) == ["none", "other speaker", "drop 1"]
    assert "STOI" in w.columns and "undefined rate (max over measures)" in w.columns


def test_no_interval_from_one_utterance_or_one_speaker():
    one = _rows(n=1)
    eff = effect_table(one, n_boot=100, seed=0)
    assert eff["ci_lo"].isna().all() and eff["ci_hi"].isna().all()
    # Four utterances of one speaker are still one cluster: no interval over speakers.
    eff = effect_table(_rows(n=4, speakers=1), n_boot=100, seed=0)
    assert eff["ci_lo"].isna().all() and (eff["n_clusters"] <= 1).all()
    by_utt = effect_table(_rows(n=4, speakers=1), n_boot=100, seed=0, cluster="utterance")
    assert np.isfinite(by_utt.loc[by_utt["n"] >= 2, "ci_lo"]).all()


def test_undefined_values_are_counted_and_block_ranking(per_utt):
    """Known answer: dropping layer 1 silences the audio so F0 is undefined in 9 of 12 utterances,
    and the 3 defined ones are huge: layer 1 must not be named as pitch's layer."""
    df = per_utt.copy()
    m = (df["intervention"] == "drop 1")
    idx = df.index[m][:9]
    df.loc[idx, "f0_rmse_cents"] = np.nan
    df.loc[df.index[m][9:], "f0_rmse_cents"] = 5000.0
    eff = effect_table(df, n_boot=200, seed=0)
    r = eff[(eff["intervention"] == "drop 1") & (eff["measure"] == "f0_rmse_cents")].iloc[0]
    assert (r["n"], r["n_undefined"]) == (3, 9) and r["undefined_rate"] == pytest.approx(0.75)
    roles = layer_roles(df, eff, n_boot=200, seed=0).set_index("property")
    assert roles.loc["pitch", "drop_layer"] == 3
    assert "1 (9/12 undefined)" in roles.loc["pitch", "drop_excluded"]
    assert "9/12 undefined" in wide_table(eff).set_index("intervention").loc["drop 1", "F0 RMSE (cents)"]


def test_layer_roles_rest_on_paired_tests(per_utt):
    eff = effect_table(per_utt, n_boot=200, seed=0)
    roles = layer_roles(per_utt, eff, n_boot=200, seed=0).set_index("property")
    assert roles.loc["speaker", "drop_layer"] == 2 and roles.loc["speaker", "drop_separated"]
    assert roles.loc["speaker", "drop_runner_up"] == 3  # 0.93 is the next lowest similarity
    assert roles.loc["speaker", "drop_vs_runner_up"] == pytest.approx(0.7 - 0.93, abs=0.02)
    assert roles.loc["pitch", "drop_layer"] == 3 and roles.loc["content", "drop_layer"] == 1
    assert roles.loc["speaker", "best_single_layer"] == 2  # only 2 keeps the most similarity (1.6 - 0.7)


def test_layer_contrasts_are_paired_and_holm_corrected(per_utt):
    eff = effect_table(per_utt, n_boot=200, seed=0)
    c = layer_contrasts(per_utt, eff, n_boot=200, seed=0)
    r = c[(c["kind"] == "drop") & (c["measure"] == "f0_rmse_cents") & (c["layer_a"] == 1) & (c["layer_b"] == 3)].iloc[0]
    assert r["diff_b_minus_a"] == pytest.approx(280, abs=1.5) and r["n"] == 12
    fam = c[(c["kind"] == "drop") & (c["measure"] == "f0_rmse_cents")]
    assert len(fam) == 3 and (fam["p_holm"] >= fam["p"]).all()
    # Equal values for every layer (STOI 0.9 after any drop): zero difference, p = 1.
    st = c[(c["kind"] == "drop") & (c["measure"] == "stoi")]
    assert (st["diff_b_minus_a"] == 0).all() and (st["p"] == 1).all()


def test_layers_with_equal_effects_are_not_separated():
    """Known answer: layers 1 and 2 hurt the speaker equally up to noise: no separation."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(10):
        rows.append(dict(utt=u, kind="none", intervention="none", layers="1-2", layer=None, spk_sim=1.0))
        for k in (1, 2):
            rows.append(dict(utt=u, kind="drop", intervention=f"drop {k}", layers=str(k), layer=k,
                             spk_sim=0.8 + 0.05 * rng.standard_normal()))
    df = pd.DataFrame(rows)
    eff = effect_table(df, 300, 0)
    r = layer_roles(df, eff, 300, 0).set_index("property").loc["speaker"]
    assert not r["drop_separated"] and r["drop_vs_runner_up_p_holm"] > 0.05
    text = " ".join(summary_sentences("s", layer_roles(df, eff, 300, 0), pd.DataFrame(), Checks()))
    assert "not separable" in text and "hurts speaker most" not in text


def test_voice_conversion_excludes_full_swaps_and_ranks_on_both(per_utt):
    vc = voice_conversion_table(per_utt, n_layers=3, n_boot=100, seed=0).set_index("intervention")
    assert vc.loc["swap 1-3", "all_layers"] and pd.isna(vc.loc["swap 1-3", "rank"])
    # swap 2 is closer to the donor but keeps 1/8 of the content; swap 2-3 keeps 3/4: it ranks first.
    assert vc.loc["swap 2-3", "rank"] == 1 and vc.loc["swap 2", "rank"] == 2
    r = vc.loc["swap 2-3"]
    assert r["cos_target"] == pytest.approx(0.9) and r["cos_source"] == pytest.approx(0.65)
    assert r["content_retention"] == pytest.approx(0.6 / 0.8)
    assert r["donor_gain"] == pytest.approx((0.9 - 0.6) / 0.4)
    assert r["cos_source_vs_target_unedited"] == pytest.approx(0.6)
    for c in ("cos_target_lo", "content_retention_hi", "joint_lo"):
        assert c in vc.columns
    text = " ".join(summary_sentences("s", pd.DataFrame(), vc.reset_index(), Checks()))
    assert "'swap 2-3'" in text and "swap 1-3" not in text
    # A swap whose content is unmeasurable in most utterances is not ranked on a few.
    df = per_utt.copy()
    df.loc[df.index[df["intervention"] == "swap 2-3"][:8], "phone_acc"] = np.nan
    vc = voice_conversion_table(df, n_layers=3, n_boot=100, seed=0).set_index("intervention")
    assert pd.isna(vc.loc["swap 2-3", "rank"]) and vc.loc["swap 2", "rank"] == 1


def test_summary_says_when_there_is_nothing_to_measure(per_utt):
    df = per_utt.copy()
    codec = df[df["kind"] == "none"].assign(kind="codec", intervention="codec (original vs decode)", spk_sim=0.40, stoi=0.64)
    df = pd.concat([df, codec.drop(columns=["phone_acc", "phone_chance"])], ignore_index=True)
    # The content measure at chance: phone accuracy equals the majority-phone rate (+ noise).
    none = df["kind"] == "none"
    df.loc[none, "phone_acc"] = 0.155 + 0.005 * np.random.default_rng(0).standard_normal(none.sum())
    df.loc[none, "phone_chance"] = 0.155
    eff = effect_table(df, 200, 0)
    checks = run_checks(df, eff, 0.75, 0.75, 200, 0)
    assert "speaker similarity" in checks.codec_poor and "STOI" in checks.codec_poor
    assert "not shown above chance" in checks.content_chance
    text = " ".join(summary_sentences("s", layer_roles(df, eff, 200, 0), voice_conversion_table(df, 3, 200, 0), checks))
    assert "nothing to measure" in text and "hurts" not in text
    assert run_checks(per_utt, effect_table(per_utt, 200, 0), 0.75, 0.75, 200, 0) == Checks()


def test_fmt_shows_enough_digits():
    assert fmt(1.0, 0.9995, 1.0) == "1.00000 [0.99950, 1.00000]"
    assert fmt(300.2, 290.0, 310.0) == "300 [290, 310]"
    assert fmt(0.00803, 0.0071, 0.0089) == "0.0080 [0.0071, 0.0089]"
    assert "no interval" in fmt(0.5)


def test_heatmap_shows_undefined_cells(per_utt, tmp_path):
    from codeclens.analyses.ablate import figures
    from codeclens.analyses.ablate.tables import IDEAL, LABELS

    df = per_utt.copy()
    df.loc[df.index[df["intervention"] == "drop 1"][:9], "f0_rmse_cents"] = np.nan
    made = dict(figures.effect_figures(effect_table(df, 100, 0), tmp_path, "g", LABELS, IDEAL))
    assert "heatmap.png" in made and "undefined" in made["heatmap.png"]
    assert (tmp_path / "heatmap.png").stat().st_size > 0 and (tmp_path / "layer_profiles.svg").is_file()
