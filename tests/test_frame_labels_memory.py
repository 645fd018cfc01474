"""Streaming label reads hold one row group, not every row group read so far.

pyarrow's ``ParquetFile`` pre-buffers by default and keeps each row group's column chunks until the
file is closed, so a streamed pass over ``frames.parquet`` held a few bytes per frame of the whole
store (F0 + voicing: 104 MB of Arrow memory at 16 M frames). The known answer here: with one row
group per chunk, Arrow's allocation after the last chunk is what it was after the first.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store
from codeclens.store.columns import FrameLabels, frames_file

ROWS = 4096


def _store(tmp_path):
    path = planted_store(tmp_path / "s", n_utt=400, n_speakers=8, frames=(200, 300), n_layers=3, codebook_size=16,
                         dim=4)
    frames = pq.read_table(path / "frames.parquet")
    pq.write_table(frames, path / "frames.parquet", row_group_size=ROWS)  # many row groups, as a large store has
    return Store(path), pq.ParquetFile(path / "frames.parquet").metadata


def _held(chunks) -> list[int]:
    pool = pa.default_memory_pool()
    out = []
    for _ in chunks:
        out.append(pool.bytes_allocated())
    return out


def test_frame_labels_stream_in_flat_arrow_memory(tmp_path):
    store, meta = _store(tmp_path)
    assert meta.num_row_groups >= 20
    one_group = max(meta.row_group(0).column(i).total_compressed_size for i in range(meta.num_columns))
    held = _held(FrameLabels(store, ["f0_hz", "voiced", "phone"], chunk=ROWS))
    assert len(held) == meta.num_row_groups
    assert held[-1] - held[0] < 2 * one_group

    # The reference this bound separates from: pyarrow's default reader keeps growing by a row group's
    # chunks per batch, over ten times the bound by the end.
    cols = ["f0_hz", "voiced", "phone"]
    default = _held(pq.ParquetFile(store.path / "frames.parquet").iter_batches(batch_size=ROWS, columns=cols))
    assert default[-1] - default[0] > 10 * 2 * one_group
    flat = _held(frames_file(store.path / "frames.parquet").iter_batches(batch_size=ROWS, columns=cols))
    assert flat[-1] - flat[0] < 2 * one_group


def test_frame_labels_values_are_the_columns(tmp_path):
    """The same values as reading the columns whole (the reader change moved no row)."""
    store, _ = _store(tmp_path)
    f0 = pq.read_table(store.path / "frames.parquet", columns=["f0_hz"]).column(0).to_numpy()
    got = np.concatenate([cols["f0_hz"] for _, _, _, cols in FrameLabels(store, ["f0_hz"], chunk=ROWS)])
    assert np.array_equal(got, f0, equal_nan=True)
