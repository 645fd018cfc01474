"""The code-tuple coverage bound that refuses cumulative / latent code controls without ranking every
row's tuple (``controls.code_coverage_bound``) equals the coverage of ``code_types`` (which it replaced
for the refusal) on stores with high and low coverage, so the same controls are refused and kept."""

from __future__ import annotations

import numpy as np
import pytest

from codeclens.analyses.probes.config import ProbeConfig
from codeclens.analyses.probes.controls import _tuple_hash, code_coverage_bound, code_types
from codeclens.analyses.probes.data import gather_task
from codeclens.analyses.probes.run import MIN_CONTROL_COVERAGE, control_coverage
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Repr, Store


@pytest.fixture(scope="module", params=[4, 64])
def store(request, tmp_path_factory):
    # codebook 4: few tuples, coverage near 1 (controls kept); 64: most tuples unseen (refused)
    return Store(planted_store(tmp_path_factory.mktemp("cov") / "s", n_utt=60, n_speakers=12, n_layers=4,
                               codebook_size=request.param, dim=8, seed=5, latent="sum"))


@pytest.mark.parametrize("rep", [Repr("cumulative", 2), Repr("cumulative", 4), Repr("latent", None)])
def test_bound_equals_the_coverage_of_code_types(store, rep):
    td = gather_task(store, "phone", ProbeConfig(task=("phone",), cv="off"))
    want = control_coverage(code_types(store, rep, td.rows))
    got = code_coverage_bound(store, rep, td.rows, chunk=97)  # chunks of unequal sizes
    assert got == pytest.approx(want, abs=0)
    assert (got < MIN_CONTROL_COVERAGE) == (want < MIN_CONTROL_COVERAGE)


def test_both_sides_of_the_threshold_are_exercised(tmp_path):
    cov = []
    for K in (4, 64):
        st = Store(planted_store(tmp_path / f"s{K}", n_utt=60, n_speakers=12, n_layers=4, codebook_size=K, dim=8,
                                 seed=5))
        td = gather_task(st, "phone", ProbeConfig(task=("phone",), cv="off"))
        cov.append(code_coverage_bound(st, Repr("cumulative", 4), td.rows))
    assert cov[0] >= MIN_CONTROL_COVERAGE > cov[1]


def test_hash_equal_tuples_equal_and_distinct_tuples_apart():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1024, size=(50_000, 8)).astype(np.int16)
    h = _tuple_hash(codes)
    np.testing.assert_array_equal(_tuple_hash(codes.copy()), h)
    assert len(np.unique(h)) == len(np.unique(codes, axis=0))  # no collision among 50 k random 8-tuples
    swapped = codes[:, ::-1].copy()
    assert not np.array_equal(_tuple_hash(swapped), h)  # order of the layers matters
