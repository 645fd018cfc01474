"""``Store.pooled``: utterance means streamed in chunks equal a brute-force numpy mean.

Known answers: the per-utterance float64 mean of the frames built directly from the stored codes
and tables (or the stored latent), on a planted store and on hand-made stores with empty
utterances; for every chunk size (chunks inside, across and exactly at utterance boundaries), on
both ways of counting codes (dense table, occurring pairs); and memory that does not grow with
the frames (no per-frame array, no memory-mapped array touched).
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses.probes.synthetic import planted_store
from codeclens.errors import CodeclensError
from codeclens.store import Store, pooling
from codeclens.store.arrays import write_store
from codeclens.store.codesio import code_rows, codes_at, latent_rows, utt_of_rows, utterance_ends

NAMES = ["layer:1", "layer:3", "cumulative:1", "cumulative:3", "latent"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("planted") / "st", n_utt=30, n_layers=3, latent="sum",
                               frames=(20, 61), seed=3))


def brute_force(store: Store, name: str) -> np.ndarray:
    """float64 utterance means from the files, independent of the code under test."""
    if name == "latent":
        x = np.load(store.path / "latent.npy").astype(np.float64)
    else:
        kind, k = name.split(":")
        codes = np.load(store.path / "codes.npy").astype(np.int64)
        layers = [int(k) - 1] if kind == "layer" else range(int(k))
        x = sum(store.tables[l].astype(np.float64)[codes[:, l]] for l in layers)
    nf = store.utterances["n_frames"].to_numpy()
    out = np.zeros((len(nf), x.shape[1]))
    for i, (a, n) in enumerate(zip(np.cumsum(nf) - nf, nf)):
        if n:
            out[i] = x[a : a + n].mean(0)
    return out


def close(got: np.ndarray, want: np.ndarray) -> None:
    """float32 rounding of the means (their float64 sums differ only in the order of additions)."""
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


@pytest.mark.parametrize("name", NAMES)
def test_pooled_equals_brute_force_mean_for_any_chunk(store, name):
    want = brute_force(store, name)
    nf = store.utterances["n_frames"].to_numpy()
    assert nf.min() != nf.max()  # chunk sizes below split utterances at varying offsets
    for chunk in (None, 1, 7, 61, int(nf[0]), int(nf[:3].sum()), store.n_frames, 10 * store.n_frames):
        close(store.pooled(f"mean({name})", batch_frames=chunk), want)
    close(store.values(f"mean({name})"), want)
    rows = np.array([4, 0, 17])
    close(store.values(f"mean({name})", rows), want[rows])


@pytest.mark.parametrize("name", ["layer:2", "cumulative:3"])
@pytest.mark.parametrize("dense", [0, 10**9])
def test_dense_and_pair_counts_give_the_same_means(store, name, dense, monkeypatch):
    monkeypatch.setattr(pooling, "DENSE_COUNTS", dense)  # 0: only occurring pairs; 1e9: always a dense table
    want = brute_force(store, name)
    for chunk in (1, 13, 1000):
        close(store.pooled(f"mean({name})", batch_frames=chunk), want)


def test_code_sums_known_answer():
    table = np.array([[1.0, 0.0], [0.0, 2.0], [10.0, 10.0]])
    group = np.array([0, 0, 0, 1, 2, 2])
    codes = np.array([1, 1, 2, 0, 2, 2], np.int16)
    want = np.array([[10.0, 14.0], [1.0, 0.0], [20.0, 20.0]])
    for dense in (0, 10**9):
        pooling.DENSE_COUNTS, old = dense, pooling.DENSE_COUNTS
        try:
            np.testing.assert_array_equal(pooling.code_sums(group, codes, table, 3), want)
        finally:
            pooling.DENSE_COUNTS = old


def test_empty_utterances_have_mean_zero(tmp_path, rng):
    nf = np.array([0, 3, 0, 0, 5, 1, 0])  # empty first, in runs, between and last
    codes = rng.integers(0, 4, size=(nf.sum(), 2))
    tables = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(2)]
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(len(nf))], "speaker": "s", "n_frames": nf})
    st = Store(write_store(tmp_path / "st", codes, tables, utts, latent=rng.standard_normal((nf.sum(), 5))))
    for name in ("layer:2", "cumulative:2", "latent"):
        want = brute_force(st, name)
        assert not want[nf == 0].any()
        for chunk in (1, 2, 4, 100):
            got = st.pooled(f"mean({name})", batch_frames=chunk)
            close(got, want)
            assert not got[nf == 0].any()


def test_pooled_bad_requests(store, tmp_path, rng):
    with pytest.raises(CodeclensError, match="not meaningful"):
        store.pooled("mean(codes:1)")
    with pytest.raises(CodeclensError, match="codec has 3"):
        store.pooled("mean(layer:4)")
    utts = pd.DataFrame({"id": ["a"], "speaker": "s", "n_frames": [3]})
    st = Store(write_store(tmp_path / "nolat", rng.integers(0, 2, (3, 1)), [np.eye(2, dtype=np.float32)], utts))
    with pytest.raises(CodeclensError, match="no latent"):
        st.pooled("mean(latent)")


def test_pooled_touches_no_per_frame_array(store):
    fresh = Store(store.path)
    fresh.pooled("mean(cumulative:3)")
    fresh.pooled("mean(latent)")
    # neither the frame -> utterance index (8 bytes a frame) nor a memory map, whose pages stay resident
    assert not {"frame_utt", "codes", "latent", "frames"} & set(vars(fresh))


def _peak_bytes(st: Store, name: str) -> int:
    tracemalloc.start()
    try:
        st.pooled(name, batch_frames=512)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_frames(tmp_path):
    # Same utterances, same width, 10x the frames: the traced peak (numpy reports its buffers) is the
    # chunk and the [utterances, D] sums. An index or a copy per frame would add >= 8 bytes x 27 k frames.
    small = Store(planted_store(tmp_path / "s", n_utt=10, frames=(300, 300), latent="sum", seed=1))
    big = Store(planted_store(tmp_path / "b", n_utt=10, frames=(3000, 3000), latent="sum", seed=1))
    for name in ("mean(layer:2)", "mean(cumulative:4)", "mean(latent)"):
        _peak_bytes(small, name)  # warm caches (tables, utterance table)
        _peak_bytes(big, name)
        grow = _peak_bytes(big, name) - _peak_bytes(small, name)
        assert grow < 8 * (big.n_frames - small.n_frames) // 4, (name, grow)


def test_codes_and_latent_file_reads_equal_the_arrays(store):
    codes, lat = np.load(store.path / "codes.npy"), np.load(store.path / "latent.npy")
    np.testing.assert_array_equal(code_rows(store, 5, 40, [2, 0]), codes[5:40][:, [2, 0]])
    np.testing.assert_array_equal(code_rows(store, 0, store.n_frames, range(3)), codes)
    np.testing.assert_array_equal(latent_rows(store, 7, 9), lat[7:9])
    rows = np.array([0, 3, 3, 100, store.n_frames - 1])
    np.testing.assert_array_equal(codes_at(store, rows, [1], chunk=4), codes[rows][:, [1]])
    ends = utterance_ends(store)
    nf = store.utterances["n_frames"].to_numpy()
    np.testing.assert_array_equal(utt_of_rows(ends, 0, store.n_frames), np.repeat(np.arange(len(nf)), nf))
