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
