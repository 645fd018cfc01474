"""A store's arrays are the shards' rows one after the other, written without holding them all.

``finalize_store`` loaded every shard's codes and latents and concatenated them in memory: every
shard's arrays and their concatenation at once, in the process that holds the codec (0.14 GB of
SpeechTokenizer latents for 22 minutes of audio, held twice; the 120-utterance study's extraction
peaked at 1.67 GB). The known answers: ``np.concatenate`` of the parts, and a traced peak of one block.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from codeclens.errors import CodeclensError
from codeclens.store import writer


def _parts(tmp_path, shapes, dtype=np.float16, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i, shape in enumerate(shapes):
        p = tmp_path / f"part{i}.npy"
        np.save(p, rng.normal(size=shape).astype(dtype))
        out.append(p)
    return out


@pytest.mark.parametrize("copy_bytes", [7, 1000, 16 << 20])
def test_concat_equals_numpy_concatenate(tmp_path, monkeypatch, copy_bytes):
    monkeypatch.setattr(writer, "COPY_BYTES", copy_bytes)
    parts = _parts(tmp_path, [(5, 3), (0, 3), (17, 3), (1, 3)])
    rows, dtype = writer.concat_npy(parts, tmp_path / "all.npy")
    want = np.concatenate([np.load(p) for p in parts])
    got = np.load(tmp_path / "all.npy")
    assert rows == 23 and dtype == np.float16 and got.dtype == want.dtype and np.array_equal(got, want)


def test_empty_shards_of_no_width_and_1d(tmp_path):
    np.save(tmp_path / "e.npy", np.zeros((0, 0), np.float16))  # a shard whose utterances all failed
    parts = [tmp_path / "e.npy", *_parts(tmp_path, [(4, 2)])]
    writer.concat_npy(parts, tmp_path / "a.npy")
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.load(parts[1]))
    np.save(tmp_path / "x.npy", np.arange(3, dtype=np.int16))
    np.save(tmp_path / "y.npy", np.arange(4, dtype=np.int16))
    rows, _ = writer.concat_npy([tmp_path / "x.npy", tmp_path / "y.npy"], tmp_path / "xy.npy")
    assert rows == 7 and np.array_equal(np.load(tmp_path / "xy.npy"), np.r_[np.arange(3), np.arange(4)])


def test_widths_that_differ_are_an_error(tmp_path):
    parts = _parts(tmp_path, [(2, 3), (2, 4)])
    with pytest.raises(CodeclensError, match="different widths"):
        writer.concat_npy(parts, tmp_path / "bad.npy")


def test_memory_is_one_block_not_the_store(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "COPY_BYTES", 1 << 20)
    parts = _parts(tmp_path, [(4096, 1024)] * 4)  # 4 x 8 MB of float16 "latents"
    total = sum(np.load(p, mmap_mode="r").nbytes for p in parts)
    tracemalloc.start()
    writer.concat_npy(parts, tmp_path / "all.npy")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.1 * total
    tracemalloc.start()  # the reference this bound separates from: the in-memory concatenation
    np.save(tmp_path / "ref.npy", np.concatenate([np.load(p) for p in parts]))
    ref_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert ref_peak > 1.5 * total
    assert np.array_equal(np.load(tmp_path / "all.npy", mmap_mode="r"), np.load(tmp_path / "ref.npy", mmap_mode="r"))
