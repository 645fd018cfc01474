"""ablate: effect tables, layer roles and the voice-conversion table from planted per-utterance results."""

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.ablate.run import effect_table, layer_roles, voice_conversion_table, wide_table


@pytest.fixture
def per_utt():
    rng = np.random.default_rng(0)
    rows = []
    for u in range(12):
        rows.append(dict(utt=u, kind="none", intervention="none", layers="1-3", layer=None, spk_sim=1.0, stoi=1.0,
                         f0_rmse_cents=0.0, phone_acc=0.8))
        rows.append(dict(utt=u, kind="reference", intervention="other speaker", layers="", layer=None, spk_sim=0.6))
        # Planted roles: layer 2 carries the speaker, layer 3 the pitch, layer 1 the content.
        for k, (sim, cents, acc) in {1: (0.95, 20, 0.3), 2: (0.7, 30, 0.75), 3: (0.93, 300, 0.78)}.items():
            rows.append(dict(utt=u, kind="drop", intervention=f"drop {k}", layers=str(k), layer=k,
                             spk_sim=sim + 0.01 * rng.standard_normal(), stoi=0.9,
                             f0_rmse_cents=cents + rng.standard_normal(), phone_acc=acc))
            rows.append(dict(utt=u, kind="only", intervention=f"only {k}", layers=str(k), layer=k,
                             spk_sim=1.6 - sim, stoi=0.5, f0_rmse_cents=400 - cents, phone_acc=0.85 - acc))
        rows.append(dict(utt=u, kind="swap", intervention="swap 2-3", layers="2-3", layer=None, spk_sim=0.65,
                         spk_sim_donor=0.9, stoi=0.8, phone_acc=0.6))
    return pd.DataFrame(rows)


def test_effect_table_means_and_cis(per_utt):
    eff = effect_table(per_utt, n_boot=200, seed=0)
    r = eff[(eff["intervention"] == "drop 3") & (eff["measure"] == "f0_rmse_cents")].iloc[0]
    assert r["n"] == 12 and r["ci_lo"] < r["mean"] < r["ci_hi"] and abs(r["mean"] - 300) < 1.5
    const = eff[(eff["intervention"] == "drop 1") & (eff["measure"] == "stoi")].iloc[0]
    assert const["ci_lo"] == const["mean"] == const["ci_hi"] == pytest.approx(0.9)
    w = wide_table(eff)
    assert list(w["intervention"][:3]) == ["none", "other speaker", "drop 1"]
    assert "STOI" in w.columns


def test_layer_roles_find_the_planted_layers(per_utt):
    roles = layer_roles(effect_table(per_utt, n_boot=200, seed=0)).set_index("property")
    assert roles.loc["speaker", "most_harmful_drop"] == 2 and roles.loc["speaker", "separated"]
    assert roles.loc["pitch", "most_harmful_drop"] == 3
    assert roles.loc["content", "most_harmful_drop"] == 1
    assert roles.loc["speaker", "best_single_layer"] == 2  # only 2 keeps the most similarity (1.6 - 0.7)


def test_voice_conversion_table(per_utt):
    vc = voice_conversion_table(effect_table(per_utt, n_boot=100, seed=0))
    r = vc.iloc[0]
    assert r["swapped_layers"] == "2-3"
    assert r["cos_target"] == pytest.approx(0.9) and r["cos_source"] == pytest.approx(0.65)
    assert r["content_retention"] == pytest.approx(0.6 / 0.8)
    assert r["cos_source_vs_target_unedited"] == pytest.approx(0.6)


def test_cache_key_follows_what_the_rows_depend_on(tmp_path):
    """Cached per-utterance rows are reused only for the same store contents and row-relevant options:
    a store re-extracted in place with a refitted codec (same path, spec and frame count) gets a new key."""
    import dataclasses

    from codeclens.analyses.ablate.run import AblateConfig, _cache_key
    from codeclens.store import Store
    from codeclens.store.arrays import write_store

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 8, size=(20, 2))
    utts = pd.DataFrame({"id": ["a", "b"], "speaker": ["s1", "s2"], "n_frames": [10, 10]})
    tables = [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(2)]
    p = tmp_path / "store"
    write_store(p, codes, tables, utts)
    cfg = AblateConfig()
    key = _cache_key(Store(p), cfg, ["drop 1"], "")
    assert _cache_key(Store(p), dataclasses.replace(cfg, n_utts=3, examples=0, n_boot=10, device="cpu"), ["drop 1"], "") == key
    assert _cache_key(Store(p), dataclasses.replace(cfg, seed=1), ["drop 1"], "") != key
    assert _cache_key(Store(p), cfg, ["drop 2"], "") != key
    assert _cache_key(Store(p), cfg, ["drop 1"], "probe-b") != key
    write_store(p, codes, [t + 1.0 for t in tables], utts)
    assert _cache_key(Store(p), cfg, ["drop 1"], "") != key
