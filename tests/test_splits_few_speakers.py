"""Speaker-disjoint splits with few speakers: every split holds a speaker (or a clear error below the
minimum), the split stays speaker-disjoint, deterministic, and many-speaker corpora keep the hash split."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.errors import CodeclensError
from codeclens.labels.splits import MIN_SPEAKERS, add_splits, hashed_split, speaker_quotas, unit_interval
from codeclens.store import Store


def _utts(n_spk: int, per: int = 4, prefix: str = "s") -> pd.DataFrame:
    i = np.arange(n_spk * per)
    return pd.DataFrame({"id": [f"u{k:04d}" for k in i], "speaker": [f"{prefix}{k % n_spk:02d}" for k in i],
                         "n_frames": 10})


@pytest.mark.parametrize("n_spk", [12, 5, 3])
def test_few_speakers_fill_every_split_disjointly_and_deterministically(n_spk):
    for seed in range(12):
        u = add_splits(_utts(n_spk), seed)
        per = u.groupby("speaker")["split_spk"].agg(["nunique", "first"])
        assert (per["nunique"] == 1).all()  # speaker-disjoint
        counts = per["first"].value_counts()
        assert set(counts.index) == {"train", "val", "test"}, (n_spk, seed, counts)
        shuffled = add_splits(_utts(n_spk).sample(frac=1, random_state=seed), seed).set_index("id")
        assert (shuffled.loc[u["id"], "split_spk"].to_numpy() == u["split_spk"].to_numpy()).all()


def test_fallback_deals_the_hash_order_in_the_fractions_proportions():
    assert speaker_quotas(12) == (9, 1, 2) and speaker_quotas(5) == (3, 1, 1) and speaker_quotas(3) == (1, 1, 1)
    # The benchmark corpus' 12 speakers: the hash leaves val empty at seed 0 (train 8, test 4).
    spk = np.array([str(100 + 7 * i) for i in range(12)])
    hashed = hashed_split(0, np.full(12, "spk"), spk)
    assert not (hashed == "val").any()
    u = add_splits(pd.DataFrame({"id": spk, "speaker": spk, "n_frames": 5}), 0).set_index("speaker")["split_spk"]
    h = pd.Series(unit_interval(0, np.full(12, "spk"), spk), index=spk).sort_values()
    assert list(u[h.index]) == ["train"] * 9 + ["val"] + ["test"] * 2
    assert dict(u) == {**dict.fromkeys(spk, "train"), "100": "val", "114": "test", "156": "test"}


def test_many_speakers_keep_their_hashed_split():
    u = _utts(30, per=3)
    got = add_splits(u, 0)["split_spk"].to_numpy()
    want = hashed_split(0, np.full(len(u), "spk"), u["speaker"].to_numpy())
    assert {"train", "val", "test"} <= set(want) and (got == want).all()


def test_open_set_speaker_probe_runs_with_12_speakers(tmp_path):
    # Speakers s00..s11 at split seed 1 hash to train 10 / val 0 / test 2: the study step that failed.
    names = np.array([f"s{i:02d}" for i in range(12)])
    assert not (hashed_split(1, np.full(12, "spk"), names) == "val").any()
    p = planted_store(tmp_path / "spk12", n_utt=72, n_speakers=12, frames=(20, 30), seed=1)
    s = Store(p)
    assert set(s.utterances["split_spk"]) == {"train", "val", "test"}
    df = run_probes([p], ProbeConfig(task=("speaker",), repr="mean(layer:2)", level="utterance", split="spk",
                                     bootstrap=0, control="none"))
    assert len(df) and set(df["split"]) == {"split_spk"}


def test_below_the_minimum_is_one_clear_error(tmp_path):
    assert MIN_SPEAKERS == 3
    p = planted_store(tmp_path / "spk2", n_utt=40, n_speakers=2, frames=(20, 30), seed=0)
    with pytest.raises(CodeclensError, match="needs at least 3 speakers.*has 2"):
        run_probes([p], ProbeConfig(task=("phone",), repr="layer:1", split="spk", bootstrap=0, control="none",
                                    cv="off"))
