"""ablate: the code edits themselves (pure functions, known answers)."""

import numpy as np
import pytest

from codeclens.analyses.ablate import interventions as ivs
from codeclens.errors import CodeclensError


def _codes(L=6, T=10, seed=0, K=50):
    return np.random.default_rng(seed).integers(0, K, size=(L, T))


@pytest.mark.parametrize("text, want", [
    ("3", (2,)), ("2-4", (1, 2, 3)), ("1,4-5", (0, 3, 4)), ("all", (0, 1, 2, 3, 4, 5)), ("5,1,1", (0, 4)),
    (" 2 - 3 ", (1, 2)),
])
def test_parse_layers_is_one_based(text, want):
    assert ivs.parse_layers(text, 6) == want


@pytest.mark.parametrize("text, needle", [
    ("0", "1-based"), ("7", "has 6 layers"), ("3-2", "1-based"), ("a", "bad layer set"), ("", "empty"),
])
def test_parse_layers_errors(text, needle):
    with pytest.raises(CodeclensError, match=needle):
        ivs.parse_layers(text, 6)


def test_format_layers_round_trips():
    for text in ("1", "2-8", "1,4-5", "1,3,5-6"):
        assert ivs.format_layers(ivs.parse_layers(text, 8)) == text


def test_parse_interventions_sweeps_and_sets():
    got = ivs.parse_interventions(["drop", "truncate", "only", "noise"], 4, "2-3")
    assert [g.name for g in got] == ["drop 2", "drop 3", "keep 1-2", "keep 1-3", "only 2", "only 3", "noise 2", "noise 3"]
    sw = ivs.parse_interventions("swap", 4, "all", "both")
    assert [g.name for g in sw] == ["swap 1", "swap 1-4", "swap 2", "swap 2-4", "swap 3", "swap 3-4", "swap 4"]
    assert [g.name for g in ivs.parse_interventions("swap", 4, "3", "suffix")] == ["swap 3-4"]
    assert [g.name for g in ivs.parse_interventions("swap", 4, "3", "single")] == ["swap 3"]
    # One comma-separated string; a piece starting with a digit continues the previous set.
    got = ivs.parse_interventions("swap:2-4,noise:1,3-4,truncate:2", 4)
    assert [(g.kind, g.layers) for g in got] == [("swap", (1, 2, 3)), ("noise", (0, 2, 3)), ("truncate", (0, 1))]
    assert got[0].single_layer is None and got[2].single_layer == 2
    with pytest.raises(CodeclensError, match="unknown intervention"):
        ivs.parse_interventions("zero", 4)
    with pytest.raises(CodeclensError, match="one layer"):
        ivs.parse_interventions("truncate:1-2", 4)


def test_drop_keep_only_edit_the_mask_not_the_codes():
    c = _codes()
    for ed, want in [
        (ivs.drop_layers(c, [1, 3]), (0, 2, 4, 5)),
        (ivs.keep_first(c, 2), (0, 1)),
        (ivs.keep_only(c, [4]), (4,)),
        (ivs.apply(ivs.Intervention("truncate", (0, 1, 2)), c), (0, 1, 2)),
        (ivs.apply(ivs.NONE, c), (0, 1, 2, 3, 4, 5)),
    ]:
        assert ed.layers == want
        assert np.array_equal(ed.codes, c) and ed.codes is not c


def test_align_time_crops_and_loops():
    d = np.arange(12).reshape(2, 6)
    assert np.array_equal(ivs.align_time(d, 4), d[:, :4])
    looped = ivs.align_time(d, 14)
    assert looped.shape == (2, 14)
    assert np.array_equal(looped[:, 6:12], d) and np.array_equal(looped[:, 12:], d[:, :2])


@pytest.mark.parametrize("T_donor", [4, 10, 23])
def test_swap_carries_the_donor_codes_at_the_chosen_layers_and_only_there(T_donor):
    src = _codes(6, 10, seed=1)
    donor = _codes(6, T_donor, seed=2) + 100  # disjoint code values: any leak is visible
    ed = ivs.swap_layers(src, donor, [1, 3, 4])
    aligned = ivs.align_time(donor, 10)
    for l in range(6):
        if l in (1, 3, 4):
            assert np.array_equal(ed.codes[l], aligned[l])
        else:
            assert np.array_equal(ed.codes[l], src[l])
    assert ed.layers == tuple(range(6))
    assert src.max() < 100  # the input is not modified


def test_swap_works_on_a_batch():
    src = np.stack([_codes(4, 8, s) for s in range(3)])
    donor = _codes(4, 5, 9) + 100
    ed = ivs.swap_layers(src, donor, [2])
    assert np.array_equal(ed.codes[:, 2], np.broadcast_to(ivs.align_time(donor, 8)[2], (3, 8)))
    assert np.array_equal(ed.codes[:, [0, 1, 3]], src[:, [0, 1, 3]])


def test_noise_codes_follow_the_layer_distribution():
    rng = np.random.default_rng(0)
    K = 8
    p0 = np.array([0.5, 0.2, 0.1, 0.1, 0.05, 0.05, 0, 0])
    p1 = np.full(K, 1 / K)
    store_codes = np.stack([rng.choice(K, 40000, p=p0), rng.choice(K, 40000, p=p1)], 1)
    dists = ivs.code_distributions(store_codes, [K, K])
    np.testing.assert_allclose(dists[0], p0, atol=0.01)
    src = np.zeros((2, 20000), dtype=np.int64) + 7
    ed = ivs.noise_layers(src, [0], dists, np.random.default_rng(1))
    freq = np.bincount(ed.codes[0], minlength=K) / 20000
    np.testing.assert_allclose(freq, dists[0], atol=0.015)
    assert freq[6] == 0 and freq[7] == 0  # codes never used by the layer are never drawn
    assert np.all(ed.codes[1] == 7)  # other layers untouched
    # Reproducible for a seed.
    again = ivs.noise_layers(src, [0], dists, np.random.default_rng(1))
    assert np.array_equal(again.codes, ed.codes)


def test_apply_checks_inputs():
    c = _codes(3, 5)
    with pytest.raises(ValueError, match="donor"):
        ivs.apply(ivs.Intervention("swap", (0,)), c)
    with pytest.raises(ValueError, match="out of range"):
        ivs.drop_layers(c, [3])
    with pytest.raises(ValueError):
        ivs.Intervention("drop", ())


def test_mean_ablation_edit_and_expected_vectors():
    codes = _codes(L=3, T=6)
    ed = ivs.apply(ivs.Intervention("mean", (1,)), codes)
    assert ed.layers == (0, 2) and ed.mean_layers == (1,) and np.array_equal(ed.codes, codes)
    assert [g.name for g in ivs.parse_interventions("mean", 3, "2-3")] == ["mean 2", "mean 3"]
    tables = [np.arange(8, dtype=float).reshape(4, 2) + 10 * l for l in range(2)]
    dists = [np.array([0.5, 0.5, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0])]
    ev = ivs.expected_vectors(tables, dists)
    assert ev[0] == pytest.approx([1.0, 2.0]) and ev[1] == pytest.approx(tables[1][3])


def test_dtw_undoes_a_time_stretch():
    """Known answer: a donor that is the source with every frame said twice aligns back to the
    source exactly, using every other donor frame (half skipped, none repeated)."""
    feats = np.random.default_rng(0).standard_normal((12, 5))
    donor = np.repeat(feats, 2, axis=0)
    al = ivs.dtw_alignment(feats, donor)
    assert np.array_equal(donor[al.index], feats)
    assert al.method == "dtw" and al.repeat_frac == 0.0 and al.skip_frac == pytest.approx(0.5)
    # The other way round: a donor at half speed repeats frames to fill the source.
    al = ivs.dtw_alignment(donor, feats)
    assert np.array_equal(feats[al.index], donor) and al.repeat_frac == pytest.approx(12 / 23)


def test_crop_loop_alignment_records_the_loop():
    al = ivs.crop_loop_alignment(10, 4)
    assert list(al.index) == [0, 1, 2, 3, 0, 1, 2, 3, 0, 1] and al.repeat_frac == pytest.approx(0.6) and al.skip_frac == 0
    al = ivs.crop_loop_alignment(3, 6)
    assert list(al.index) == [0, 1, 2] and al.repeat_frac == 0 and al.skip_frac == pytest.approx(0.5)


def test_dtw_path_cost_matches_the_textbook_recursion():
    rng = np.random.default_rng(2)
    for t, u in ((7, 9), (9, 4), (1, 5)):
        c = rng.random((t, u))
        d = np.full((t + 1, u + 1), np.inf)
        d[0, 0] = 0.0
        for i in range(1, t + 1):
            for j in range(1, u + 1):
                d[i, j] = c[i - 1, j - 1] + min(d[i - 1, j - 1], d[i - 1, j], d[i, j - 1])
        path = ivs.dtw_path(c)
        assert path[0] == (0, 0) and path[-1] == (t - 1, u - 1)
        assert all(0 <= a2 - a1 <= 1 and 0 <= b2 - b1 <= 1 for (a1, b1), (a2, b2) in zip(path, path[1:]))
        assert sum(c[p] for p in path) == pytest.approx(d[t, u])
