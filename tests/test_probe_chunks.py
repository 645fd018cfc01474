"""Chunked label gathering (store.columns.FrameLabels) gives what whole-column reading gives.

Known answers: the rows, labels and utterance groups of every task on a planted store,
recomputed here from ``Store.frames`` (pandas, whole columns); gather_task with a chunk of
a few hundred frames (many chunks, none aligned with utterances) must equal them and the
one-chunk gather exactly, and the CLI's probes.csv must not change with the chunk size.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig
from codeclens.analyses.probes.data import SPLITS, gather_task
from codeclens.analyses.probes.run import _speaker_medians, semitone_task
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.cli import main
from codeclens.store import Store
from codeclens.store import columns as store_columns
from codeclens.store.arrays import write_store
from codeclens.store.columns import FrameLabels, frame_label

CHUNK = 97


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("chunks") / "s", n_utt=40, n_speakers=8, frames=(30, 60),
                               n_layers=3, codebook_size=32, dim=8, seed=3))


def _reference(store: Store, task: str, scol: str):
    """Rows, labels and groups per split straight from the pandas frames table."""
    fr, u = store.frames, store.utterances
    utt = np.repeat(np.arange(len(u)), u["n_frames"].to_numpy())
    split = u[scol].astype(str).to_numpy()[utt]
    if task == "f0":
        f0 = fr["f0_hz"].to_numpy(np.float64)
        with np.errstate(invalid="ignore"):
            ok = (f0 > 0) & fr["voiced"].to_numpy(bool)
        lab = f0.astype(np.float32)
    else:
        lab = (fr[task] if task in fr.columns else u[task].to_numpy()[utt])
        lab = np.asarray(lab).astype(str)
        ok = lab != ""
    out = {}
    for s in SPLITS:
        r = np.flatnonzero(ok & (split == s))
        out[s] = (r, lab[r], utt[r])
    return out


@pytest.mark.parametrize("task", ["phone", "speaker", "f0"])
def test_chunked_gather_equals_whole_columns(store, task):
    cfg = ProbeConfig(task=(task,))
    assert store.n_frames > 8 * CHUNK  # several chunks, cutting through utterances
    chunked = gather_task(store, task, cfg, chunk=CHUNK)
    whole = gather_task(store, task, cfg, chunk=10**9)
    ref = _reference(store, task, chunked.split_column)
    assert chunked.classes == whole.classes and chunked.n_train_classes == whole.n_train_classes
    for s in SPLITS:
        r, lab, utt = ref[s]
        assert len(r) > 0
        for td in (chunked, whole):
            np.testing.assert_array_equal(td.rows[s], r)
            np.testing.assert_array_equal(td.groups[s], utt)
            assert td.rows[s].dtype == np.int32 and td.groups[s].dtype == np.int32
            if td.categorical:
                assert td.y[s].dtype == np.int32
                np.testing.assert_array_equal(np.asarray(td.classes)[td.y[s]], lab)
            else:
                assert td.y[s].dtype == np.float32
                np.testing.assert_array_equal(td.y[s], lab)


def test_train_budget_keeps_whole_utterances(store):
    cfg = ProbeConfig(task=("phone",), max_train_frames=300)
    chunked = gather_task(store, "phone", cfg, chunk=CHUNK)
    whole = gather_task(store, "phone", cfg, chunk=10**9)
    np.testing.assert_array_equal(chunked.rows["train"], whole.rows["train"])
    assert 0 < len(chunked.rows["train"]) <= 300
    kept = np.unique(chunked.groups["train"])
    full = gather_task(store, "phone", ProbeConfig(task=("phone",)), chunk=CHUNK)
    assert np.isin(full.groups["train"], kept).sum() == len(chunked.rows["train"])  # whole utterances


def test_speaker_medians_match_pandas():
    rng = np.random.default_rng(0)
    for n in (1001, 1000):  # odd and even group sizes
        hz = (rng.random(n) * 200 + 60).astype(np.float32)
        hz[:10] = hz[10]  # ties
        of = rng.integers(0, 7, n).astype(np.int32)
        of[of == 5] = 4  # an absent speaker id
        ref = pd.Series(hz).groupby(of).median()
        # Rows as two pieces of utterances, each utterance its own speaker id (0..7; 7 has no rows).
        cut = n // 3
        got = _speaker_medians([hz[:cut], hz[cut:]], [of[:cut], of[cut:]], np.arange(8, dtype=np.int32), chunk=64)
        np.testing.assert_array_equal(got[ref.index.to_numpy()], ref.to_numpy())
        assert np.isnan(got[[5, 7]]).all()


def test_semitones_against_pandas(store):
    td = gather_task(store, "f0", ProbeConfig(task=("f0",)), chunk=CHUNK)
    st = semitone_task(store, td)
    spk = store.utterances["speaker"].astype(str).to_numpy()
    hz = np.concatenate([td.y[s] for s in SPLITS])
    who = np.concatenate([spk[td.groups[s]] for s in SPLITS])
    med = pd.Series(hz).groupby(who).median()
    for s in SPLITS:
        want = (12.0 * np.log2(td.y[s] / med.loc[spk[td.groups[s]]].to_numpy().astype(np.float64))).astype(np.float32)
        np.testing.assert_array_equal(st.y[s], want)


def test_probes_csv_does_not_depend_on_the_chunk(store, tmp_path, monkeypatch):
    argv = ["--task", "phone,speaker,f0", "--repr", "layer:1,layer:3", "--l2", "1e-4,1e-2", "--bootstrap", "50",
            "--quiet"]
    out = {}
    for name, chunk in (("chunked", CHUNK), ("whole", 10**9)):
        monkeypatch.setattr(store_columns, "CHUNK_ROWS", chunk)
        assert main(["probe", "--store", str(store.path), "--out", str(tmp_path / name), *argv]) == 0
        out[name] = pd.read_csv(tmp_path / name / "probes.csv")
    a, b = out["chunked"], out["whole"]
    assert len(a) > 0 and {"phone", "speaker", "f0", "f0_st"} <= set(a["task"])
    pd.testing.assert_frame_equal(a, b)


def test_frame_labels_chunks_encode_like_whole_columns(tmp_path):
    """Empty strings, nulls and negative integers are missing, names merged across chunks of 2
    frames (a name first met in a later chunk), utterance columns broadcast per chunk."""

    u = pd.DataFrame({"id": ["a", "b"], "speaker": ["s1", "s0"], "n_frames": [2, 3], "grp": [5, -1]})
    fr = pd.DataFrame({"lab": ["x", "", None, "y", "x"], "unit": np.array([3, -1, 0, 3, 7]),
                       "f": [1.5, np.nan, 2.0, 0.0, -1.0]})
    s = Store(write_store(tmp_path / "s", np.zeros((5, 1), np.int16), [np.eye(2, dtype=np.float32)], u, fr))
    cols = ["lab", "unit", "f", "speaker", "grp"]
    reader = FrameLabels(s, cols, chunk=2)
    got = {c: [] for c in cols}
    spans, utts = [], []
    for a, b, utt, chunk in reader:
        spans.append((a, b))
        utts += list(utt)
        for c in cols:
            got[c].append(chunk[c])
    assert spans == [(0, 2), (2, 4), (4, 5)] and utts == [0, 0, 1, 1, 1]
    for c in cols:
        whole = frame_label(s, c)
        x = np.concatenate(got[c])
        assert reader.categorical[c] == whole.categorical
        if whole.categorical:
            names = reader.names(c)
            assert list(np.where(x >= 0, names[np.maximum(x, 0)], "-")) == \
                list(np.where(whole.codes >= 0, whole.names[whole.codes], "-"))
        else:
            np.testing.assert_array_equal(x, whole.values)
