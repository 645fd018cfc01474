"""``Store.iter_batches``: batches read from the files equal ``Store.materialize``, and a pass over the
corpus leaves no memory map behind (a map's touched pages stay resident: 16 bytes a frame of an
8-layer codec's codes, 256 MB at 16 M frames, held by the frame-path probes after their whitening)."""

from __future__ import annotations

import numpy as np
import pytest

from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store
from codeclens.store.codesio import latent_at

NAMES = ["codes:2", "layer:1", "layer:3", "cumulative:1", "cumulative:3", "latent"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("planted") / "st", n_utt=30, n_layers=3, latent="sum",
                               frames=(20, 61), seed=3))


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("batch", [7, 256, 10**6])
def test_batches_equal_materialize(store, name, batch):
    rng = np.random.default_rng(0)
    subset = np.sort(rng.choice(store.n_frames, 300, replace=False))
    shuffled = rng.permutation(subset)  # not ascending: materialised as before
    for rows in (None, subset, shuffled):
        got = list(store.iter_batches(name, batch, rows=rows))
        want_rows = np.arange(store.n_frames) if rows is None else rows
        np.testing.assert_array_equal(np.concatenate([r for r, _ in got]), want_rows)
        x = np.concatenate([v for _, v in got])
        ref = store.materialize(name, want_rows)
        assert x.dtype == ref.dtype
        np.testing.assert_array_equal(x, ref)  # the same lookups and additions: bit for bit


def test_a_pass_leaves_no_memory_map(store):
    fresh = Store(store.path)
    for name in ("cumulative:3", "layer:2", "latent"):
        for _ in fresh.iter_batches(name, 64):
            pass
        for _ in fresh.iter_batches(name, 64, rows=np.arange(5, fresh_frames(fresh), 3)):
            pass
    assert not {"codes", "latent"} & set(vars(fresh))


def fresh_frames(st: Store) -> int:
    return int(st.utterances["n_frames"].sum())


def test_latent_at_known_rows(store):
    lat = np.load(store.path / "latent.npy")
    rows = np.array([0, 3, 3, 100, store.n_frames - 1])
    np.testing.assert_array_equal(latent_at(store, rows, chunk_bytes=64), lat[rows])
    with pytest.raises(ValueError):
        latent_at(store, rows[::-1])
