"""Streamed ``tokens`` and ``mi``: the chunk size changes nothing, and the streamed values equal
whole-array reference computations (scikit-learn's MI, numpy quantiles, in-memory co-occurrences)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses import framestream as fs
from codeclens.analyses import infotheory as it
from codeclens.analyses.mi import MIConfig, count_targets, heldout_utterances, resolve_targets
from codeclens.cli import main
from codeclens.store import Store
from codeclens.store.arrays import write_store
from test_mi import planted  # noqa: F401 (fixture: the planted store with a train/test utterance split)


def _outputs(out, names):
    return {n: pd.read_parquet(out / n) if n.endswith(".parquet") else pd.read_csv(out / n) for n in names}


@pytest.mark.parametrize("argv, files", [
    (["tokens", "--n-shuffles", "3"], ["token_metrics.csv", "association_curve.csv", "cooccurrence.parquet"]),
    (["mi", "--layers", "1-3", "--targets", "phone,speaker,f0", "--steps", "30", "--n-shuffles", "3",
      "--max-train", "500", "--max-test", "300"], ["mi_discrete.csv", "mi_club.csv"]),
])
def test_chunk_size_changes_nothing(planted, tmp_path, monkeypatch, one_torch_thread, argv, files):
    """Chunks of 97 frames (crossing utterances and parquet batches) against one chunk: every output
    equal, including the bracket, whose training / held-out samples must be the same frames."""
    runs = {}
    for chunk in (97, 10**9):
        monkeypatch.setattr(fs, "CHUNK_FRAMES", chunk)
        out = tmp_path / f"c{chunk}"
        assert main([argv[0], "--store", str(planted), "--out", str(out), "--quiet", *argv[1:]]) == 0
        runs[chunk] = _outputs(out, files)
    for name in files:
        pd.testing.assert_frame_equal(runs[97][name], runs[10**9][name], check_exact=True)


def test_streamed_tables_equal_whole_array_reference(planted):
    """Per target, the count tables of the streamed pass equal co-occurrences of whole arrays: a frame
    string column (phone), an utterance column (speaker) and binned log2 F0 on voiced frames, with
    edges equal to numpy's quantiles of all voiced frames (fewer than QUANTILE_SAMPLE: exact)."""
    s = Store(planted)
    targets = resolve_targets(s, ["phone", "speaker", "f0"], 8, chunk=50)
    counted = count_targets(s, [1, 2, 3], targets, MIConfig(max_train=100, max_test=100), chunk=61)
    codes = np.asarray(s.codes, np.int64)
    f0 = s.frame_column("f0_hz")
    voiced = np.isfinite(f0) & (f0 > 0) & s.frame_column("voiced").astype(bool)
    lf0 = np.log2(f0[voiced])
    edges = np.unique(np.quantile(lf0, np.linspace(0, 1, 9)[1:-1]))
    np.testing.assert_array_equal(targets[2].edges, edges)
    assert targets[2].n_valid == voiced.sum()
    refs = []
    for col in ("phone", "speaker"):
        keep, ids, cls = it.encode_labels(s.frame_column(col))
        refs.append((keep, ids, len(cls)))
    refs.append((voiced, np.searchsorted(edges, lf0, side="right"), len(edges) + 1))
    for cnt, (keep, ids, n_cls) in zip(counted, refs):
        assert cnt.n_classes == n_cls
        for j in range(3):
            np.testing.assert_array_equal(cnt.tables[j], it.cooccurrence(codes[keep, j], ids, 32, n_cls))


def test_streamed_mi_equals_sklearn_and_the_planted_value(planted, tmp_path):
    """The CLI's plug-in MI against scikit-learn's mutual_info_score on whole arrays; layer 2 codes
    are 8 x speaker + an F0 bin, so I(code; speaker) = H(speaker) = 2 bits exactly (4 balanced speakers)."""
    from sklearn.metrics import mutual_info_score

    out = tmp_path / "mi"
    assert main(["mi", "--store", str(planted), "--targets", "phone,speaker", "--no-club", "--n-shuffles", "0",
                 "--out", str(out), "--quiet"]) == 0
    d = pd.read_csv(out / "mi_discrete.csv").set_index(["layer", "target"])
    s = Store(planted)
    codes = np.asarray(s.codes, np.int64)
    for target in ("phone", "speaker"):
        lab = s.frame_column(target).astype(str)
        for layer in (1, 2, 3):
            ref = mutual_info_score(lab, codes[:, layer - 1]) / math.log(2)
            assert d.loc[(layer, target), "mi_plugin_bits"] == pytest.approx(ref, abs=1e-12)
    assert d.loc[(2, "speaker"), "mi_plugin_bits"] == pytest.approx(2.0, abs=1e-12)


def test_tokens_pnmi_equals_sklearn_normalised_reference(planted, tmp_path):
    from sklearn.metrics import mutual_info_score

    out = tmp_path / "tok"
    assert main(["tokens", "--store", str(planted), "--label", "phone", "--n-shuffles", "0", "--out", str(out),
                 "--quiet"]) == 0
    m = pd.read_csv(out / "token_metrics.csv").set_index("layer")
    s = Store(planted)
    lab = s.frame_column("phone").astype(str)
    h = it.entropy(np.unique(lab, return_counts=True)[1])
    for layer in (1, 2, 3):
        ref = mutual_info_score(lab, np.asarray(s.codes[:, layer - 1])) / h
        assert m.loc[layer, "pnmi_raw"] == pytest.approx(ref, abs=1e-12)
    assert m.loc[1, "pnmi_raw"] == pytest.approx(1.0)  # layer 1 codes determine the phone


def test_samples_are_the_smallest_row_keys_and_split_by_utterance(planted):
    """The bracket's samples are drawn per frame within the utterance split (training frames only from
    training utterances), and are exactly the frames with the smallest row keys (whole-array reference)."""
    s = Store(planted)
    cfg = MIConfig(max_train=300, max_test=200, seed=3)
    (cnt,) = count_targets(s, [1], resolve_targets(s, ["phone"], 8), cfg, chunk=89)
    held = heldout_utterances(s, cfg.seed)[s.frame_utt]
    keys = fs.row_keys(np.arange(s.n_frames), cfg.seed)
    for part, mask, size in ((cnt.train, ~held, 300), (cnt.test, held, 200)):
        rows = np.flatnonzero(mask)
        ref = np.sort(rows[np.argsort(keys[rows], kind="stable")[:size]])
        np.testing.assert_array_equal(part["row"], ref)
        np.testing.assert_array_equal(part["codes"][:, 0], np.asarray(s.codes[:, 0])[ref])


def test_reservoir_is_uniform_and_independent_of_chunking():
    n, size = 200_000, 5_000
    rows = np.arange(n)
    keys = fs.row_keys(rows, 7)
    assert len(np.unique(keys)) == n
    ref = np.sort(np.argsort(keys)[:size])
    for chunk in (1_000, 33_333, n):
        r = fs.Reservoir(size, seed=7)
        for a in range(0, n, chunk):
            r.add(rows[a : a + chunk], v=rows[a : a + chunk] * 2.0)
        got = r.sorted_by("row")
        np.testing.assert_array_equal(got["row"], ref)
        np.testing.assert_array_equal(got["v"], ref * 2.0)
        assert r.seen == n
    # uniform: each decile of the rows holds about a tenth of the sample (binomial sd ~21)
    assert np.abs(np.bincount(ref * 10 // n, minlength=10) - size / 10).max() < 100
    assert not np.array_equal(np.sort(np.argsort(fs.row_keys(rows, 8))[:size]), ref)  # the seed matters


def test_unused_dictionary_values_are_not_classes(tmp_path, rng):
    """A categorical label column carries its unused categories in the parquet dictionary; they must not
    become (empty) classes of the tables or the MI's class count."""
    n = 400
    phone = pd.Categorical(rng.choice(["a", "b", "c"], n), categories=["a", "b", "c", "zz_unused"])
    codes = rng.integers(0, 8, (n, 1))
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(4)], "speaker": ["s0", "s1"] * 2, "n_frames": 100})
    path = write_store(tmp_path / "st", codes, [rng.normal(size=(8, 4)).astype(np.float32)], utts,
                       pd.DataFrame({"phone": phone.astype(str)}), frame_rate=50.0)
    fr = pd.read_parquet(path / "frames.parquet")
    fr["phone"] = phone  # as a labeller that writes categoricals would
    fr.to_parquet(path / "frames.parquet", index=False)
    st = Store(path)
    tables, classes = fs.count_codes_by_label(st, [1], "phone", chunk=37)
    assert classes.tolist() == ["a", "b", "c"]
    np.testing.assert_array_equal(tables[0], it.cooccurrence(codes[:, 0], np.asarray(phone.codes), 8, 3))


def test_streaming_holds_one_batch_not_every_row_group(tmp_path, rng):
    """Arrow memory alive while streaming a many-row-group frame table stays at about one batch: with
    Parquet pre-buffering (pyarrow's default) the column chunks of every row group were held, a few
    bytes per frame of the corpus (120 MB for F0 and voicing of 16 M frames)."""
    import pyarrow as pa

    n, group = 128_000, 2_000
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(64)], "speaker": ["s0", "s1"] * 32, "n_frames": n // 64})
    path = write_store(tmp_path / "st", rng.integers(0, 8, (n, 1)), [rng.normal(size=(8, 4)).astype(np.float32)],
                       utts, pd.DataFrame({"f0_hz": rng.uniform(80, 300, n)}), frame_rate=50.0)
    pd.read_parquet(path / "frames.parquet").to_parquet(path / "frames.parquet", index=False,
                                                        row_group_size=group, compression=None)
    st = Store(path)
    base, live = pa.total_allocated_bytes(), 0
    for _, _, v in fs.iter_chunks(st, [], raw=["f0_hz"], chunk=group):
        live = max(live, pa.total_allocated_bytes() - base)
    assert 0 < live < 8 * group * 8, live  # a 2000-frame batch of float64 is 16 kB; all groups 1 MB
