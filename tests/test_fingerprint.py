"""Store fingerprints: content decides them, reading a store never changes it."""

from __future__ import annotations

import shutil

import pandas as pd

from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store


def test_fingerprint_follows_content_not_place(tmp_path, monkeypatch):
    monkeypatch.setenv("CODECLENS_CACHE", str(tmp_path / "cache"))
    a = planted_store(tmp_path / "a", n_utt=6, n_speakers=2, seed=0)
    files = sorted(p.name for p in a.iterdir())
    fa = Store(a).fingerprint
    assert sorted(p.name for p in a.iterdir()) == files  # the memo lives outside the store
    b = tmp_path / "b"
    shutil.copytree(a, b)
    assert Store(b).fingerprint == fa  # same bytes elsewhere: same fingerprint
    # relabelling (rewriting frames.parquet) changes it, even on a second open of the same path
    f = pd.read_parquet(b / "frames.parquet")
    f["phone"] = "p00"
    f.to_parquet(b / "frames.parquet", index=False)
    assert Store(b).fingerprint != fa
    other = planted_store(tmp_path / "c", n_utt=6, n_speakers=2, seed=1)
    assert Store(other).fingerprint != fa
