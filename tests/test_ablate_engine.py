"""ablate's shared engine, donors and content probe: known answers on real codecs and real stores."""

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.ablate import interventions as ivs
from codeclens.analyses.ablate.donors import align_donor, choose_donor
from codeclens.analyses.ablate.engine import Engine, Measurer, cache_key, decode_codes, decode_edit
from codeclens.analyses.ablate.phoneprobe import fit_phone_probe
from codeclens.codecs import load_codec
from codeclens.store import Store
from codeclens.store.arrays import write_store


@pytest.fixture(scope="module")
def melrvq():
    return load_codec("melrvq?random_init=1&layers=3&codebook_size=8", "cpu")


def _tables(codec):
    return [t.cpu().numpy() for t in codec.tables()]


def test_mean_ablation_with_a_point_mass_is_setting_that_code(melrvq):
    """Known answer: when layer k always uses code c, its expected table vector is table_k[c], so
    mean-ablating k decodes exactly like codes whose layer k is c everywhere."""
    codes = np.random.default_rng(0).integers(0, 8, size=(3, 12))
    k, c = 2, 5
    dists = [np.full(8, 1 / 8) for _ in range(3)]
    dists[k] = np.eye(8)[c]
    expected = ivs.expected_vectors(_tables(melrvq), dists)
    got = decode_edit(melrvq, ivs.mean_layers(codes, [k]), expected)
    fixed = codes.copy()
    fixed[k] = c
    assert np.array_equal(got, decode_codes(melrvq, fixed))
    # And it is not dropping the layer.
    assert not np.allclose(got, decode_codes(melrvq, codes, [0, 1]))


def test_engine_decodes_each_distinct_edit_once(melrvq):
    codes = np.random.default_rng(1).integers(0, 8, size=(3, 10))
    eng = Engine(melrvq, Measurer(["loudness"], melrvq.sample_rate, "cpu", None))
    _, _, none = eng.begin(codes, None)
    assert none["loudness_db"] == 0.0 and eng.decodes == 1
    a = eng.run(ivs.keep_only(codes, [0]))
    b = eng.run(ivs.keep_first(codes, 1))  # only 1 == keep 1
    c = eng.run(ivs.keep_first(codes, 3))  # keep 1..L == unedited
    assert eng.decodes == 2 and eng.hits == 2
    assert np.array_equal(a[0], b[0]) and a[1] == b[1] and c[1]["loudness_db"] == 0.0


def _store(path, sentence=True, n_spk=4, utts_per_spk=2, seed=0):
    rng = np.random.default_rng(seed)
    n = n_spk * utts_per_spk
    nf = [10] * n
    codes = rng.integers(0, 8, size=(sum(nf), 2))
    cols = {"id": [f"u{i}" for i in range(n)], "speaker": [f"s{i % n_spk}" for i in range(n)], "n_frames": nf}
    if sentence:
        cols["sentence"] = [i // n_spk for i in range(n)]  # round r: every speaker says sentence r
    phones = np.array(["a", "b", "c"])[rng.integers(0, 3, sum(nf))]
    write_store(path, codes, [rng.standard_normal((8, 4)).astype(np.float32) for _ in range(2)],
                pd.DataFrame(cols), frames=pd.DataFrame({"phone": phones}))
    return Store(path)


def test_donors_prefer_the_same_sentence(tmp_path):
    s = _store(tmp_path / "a")
    for row in range(s.n_utterances):
        d = choose_donor(s, row, True, seed=0)
        u = s.utterances
        assert d.same_sentence and d.other_speaker
        assert u["sentence"].iloc[d.row] == u["sentence"].iloc[row] and u["speaker"].iloc[d.row] != u["speaker"].iloc[row]
    plain = _store(tmp_path / "b", sentence=False)
    assert not choose_donor(plain, 0, True, seed=0).same_sentence
    # Without the preference donors come from any other speaker, and the flag says which share the sentence.
    free = [choose_donor(s, row, True, seed=0, same_sentence=False) for row in range(s.n_utterances)]
    u = s.utterances
    assert all(d.same_sentence == (u["sentence"].iloc[d.row] == u["sentence"].iloc[r]) for r, d in enumerate(free))
    assert not all(d.same_sentence for d in free)


def test_align_donor_on_the_codes_lookups(tmp_path):
    s = _store(tmp_path / "a")
    src = np.asarray(s.codes[:10]).T.astype(np.int64)
    donor = np.repeat(src, 2, axis=1)  # the same codes said at half speed
    aligned, al = align_donor(s.tables, src, donor, "dtw")
    assert np.array_equal(aligned, src) and al.skip_frac == pytest.approx(0.5)
    cropped, al = align_donor(s.tables, src, donor, "crop")
    assert np.array_equal(cropped, donor[:, :10]) and al.method == "crop/loop"


def test_content_probe_never_sees_a_measured_speaker(tmp_path):
    s = _store(tmp_path / "a", n_spk=4, utts_per_spk=3)
    spk = s.utterances["speaker"].to_numpy()
    measured = [0, 1]  # speakers s0, s1
    probe, said = fit_phone_probe(s, measured, 2000, 0, "cpu")
    assert probe is not None and "disjoint from the 2 measured speakers" in said
    u = s.utterances
    if probe.source.startswith("probes.fit_probe"):
        # The shared probe learns from the speaker-disjoint split's train and val speakers only.
        fit = set(spk[u["split_spk"].isin(["train", "val"]).to_numpy()])
        assert not fit & {"s0", "s1"} and probe.train_speakers == len(fit)
    else:
        assert probe.train_speakers == 2  # s2 and s3
    none, why = fit_phone_probe(s, list(range(4)), 2000, 0, "cpu")  # every speaker measured
    assert none is None and "every speaker" in why


def test_cache_key_follows_the_store_content(tmp_path):
    s = _store(tmp_path / "a")
    key = cache_key(s, "melrvq", {"seed": 0}, interventions=["drop 1"])
    assert cache_key(Store(tmp_path / "a"), "melrvq", {"seed": 0}, interventions=["drop 1"]) == key
    assert cache_key(s, "melrvq", {"seed": 1}, interventions=["drop 1"]) != key
    assert cache_key(s, "other", {"seed": 0}, interventions=["drop 1"]) != key
    # Rewritten in place with other tables (a refitted codec): same path, same frame count, new key.
    u = s.utterances
    write_store(tmp_path / "a", np.asarray(s.codes), [t + 1.0 for t in s.tables], u[["id", "speaker", "n_frames", "sentence"]])
    assert cache_key(Store(tmp_path / "a"), "melrvq", {"seed": 0}, interventions=["drop 1"]) != key
