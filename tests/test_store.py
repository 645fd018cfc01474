"""Feature store: extraction through the real CLI, resume after a crash, bad input, reading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codeclens.cli import main
from codeclens.corpora import CORPORA, Utterance
from codeclens.corpora.folder import FolderCorpus
from codeclens.store import Store
from codeclens.store.arrays import write_store


class _CrashOnce(Utterance):
    """Raises KeyboardInterrupt (what Ctrl-C raises) the first time a marked utterance loads."""

    def load(self, sample_rate=None):
        flag = Path(dict(self.extra)["flag"])
        with open(flag.with_suffix(".log"), "a") as f:
            f.write(self.id + "\n")
        if dict(self.extra).get("crash") and flag.exists():
            flag.unlink()
            raise KeyboardInterrupt
        return super().load(sample_rate)


@CORPORA.register("crashonce")
class CrashOnceCorpus(FolderCorpus):
    """The folder corpus, but utterance 4 is interrupted once while the flag file exists."""

    options = ("flag",)

    def __init__(self, spec):
        super().__init__(spec)
        self.flag = spec.get("flag")

    def __iter__(self):
        for i, u in enumerate(super().__iter__()):
            yield _CrashOnce(u.id, u.path, u.speaker, extra=(("flag", self.flag), ("crash", i == 4)))


from codeclens.codecs import CodecAdapter
from codeclens.codecs.melrvq import MelRVQ


class NoLatentMel(MelRVQ):
    """melrvq without a latent, loaded as the plug-in ``python:test_store:NoLatentMel``."""

    latent = CodecAdapter.latent


def _extract(corpus, codec, out, *extra):
    return main(["extract", "--corpus", corpus, "--codec", codec, "--out", str(out), "--quiet", *extra])


def test_extract_and_info(audio_folder, melrvq_dir, tmp_path, capsys):
    out = tmp_path / "store"
    assert _extract(str(audio_folder), f"melrvq?checkpoint={melrvq_dir}", out, "--labels", "none", "--latent") == 0
    s = Store(out)
    assert s.n_utterances == 6 and s.n_layers == 4 and s.codes.dtype == np.int16
    # The corrupt file is reported with its path and skipped, not fatal.
    (skip,) = s.manifest["skipped"]
    assert skip["where"].endswith("broken.wav") and "unreadable" in skip["message"] and skip["stage"] == "audio"
    # Frames per utterance follow the codec frame rate: ceil(samples / 320).
    assert (s.utterances["n_frames"] == np.ceil(s.utterances["duration"] * 16000 / 320)).all()
    assert s.latent.shape == (s.n_frames, 80)
    assert set(s.utterances["split_utt"]) <= {"train", "val", "test"}
    # Provenance: config and versions that made it.
    assert s.manifest["config"]["codec"].startswith("melrvq") and "torch" in s.manifest["versions"]
    capsys.readouterr()
    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["utterances"] == 6 and info["frames"] == s.n_frames
    # A second run with the same config is a no-op.
    assert _extract(str(audio_folder), f"melrvq?checkpoint={melrvq_dir}", out, "--labels", "none", "--latent") == 0


def test_store_codes_equal_codec_codes(audio_folder, melrvq_dir, tmp_path):
    """What the store holds is exactly what the codec produces for each file alone."""
    import torch

    from codeclens.audio import load_audio
    from codeclens.codecs import load_codec

    out = tmp_path / "s"
    _extract(str(audio_folder), f"melrvq?checkpoint={melrvq_dir}", out, "--labels", "none", "--batch-seconds", "3")
    s = Store(out)
    codec = load_codec(f"melrvq?checkpoint={melrvq_dir}", "cpu")
    for _, row in s.utterances.iterrows():
        a, _ = load_audio(row["path"], 16000)
        c, n = codec.encode(torch.from_numpy(a)[None], torch.tensor([len(a)]))
        stored = s.codes[row["frame_offset"] : row["frame_offset"] + row["n_frames"]]
        assert np.array_equal(stored, c[0, :, : int(n[0])].T.numpy())
    # Tables saved in the store are the codec's tables, so layer:k vectors are exact.
    for l in range(4):
        np.testing.assert_array_equal(s.tables[l], codec.tables()[l].numpy())
    x = s.materialize("cumulative:4", slice(0, 10))
    ref = sum(s.tables[l][s.codes[:10, l]] for l in range(4))
    np.testing.assert_allclose(x, ref, rtol=1e-6)


def test_resume_after_crash(audio_folder, melrvq_dir, tmp_path):
    codec = f"melrvq?checkpoint={melrvq_dir}"
    ref = tmp_path / "ref"
    assert _extract(str(audio_folder), codec, ref, "--labels", "none", "--shard-size", "2") == 0

    flag = tmp_path / "flag"
    flag.write_text("crash")
    corpus = f"crashonce:{audio_folder}?flag={flag}"
    out = tmp_path / "resumed"
    assert _extract(corpus, codec, out, "--labels", "none", "--shard-size", "2") == 130
    done = sorted(p.name for p in (out / "shards").iterdir() if not p.name.startswith("."))
    assert done == ["shard-00000", "shard-00001"]
    assert not json.loads((out / "manifest.json").read_text())["complete"]
    with pytest.raises(Exception, match="not finished"):
        Store(out)

    log = flag.with_suffix(".log")
    log.write_text("")
    assert _extract(corpus, codec, out, "--labels", "none", "--shard-size", "2") == 0
    # Only the unfinished shards were redone (items 4..6), and the result equals an uninterrupted run.
    assert len(log.read_text().split()) == 3
    a, b = Store(ref), Store(out)
    assert np.array_equal(a.codes, b.codes)
    cols = ["id", "speaker", "n_frames", "frame_offset", "split_utt", "split_spk"]
    pd.testing.assert_frame_equal(a.utterances[cols], b.utterances[cols])
    pd.testing.assert_frame_equal(a.frames, b.frames)
    assert not (out / "shards").exists()


def test_bad_input_is_one_line(audio_folder, melrvq_dir, tmp_path, capsys):
    codec = f"melrvq?checkpoint={melrvq_dir}"
    cases = [
        ([str(audio_folder), "nosuch:codec", tmp_path / "a"], "unknown codec 'nosuch'"),
        ([str(audio_folder), f"melrvq?checkpoint={tmp_path}/missing", tmp_path / "b"], "checkpoint not found"),
        ([str(audio_folder), "melrvq?checkpoint=x&wat=1", tmp_path / "c"], "unknown option(s) wat"),
        ([str(tmp_path / "nope"), codec, tmp_path / "d"], "is not an existing folder"),
    ]
    (tmp_path / "empty").mkdir()
    cases.append(([str(tmp_path / "empty"), codec, tmp_path / "e"], "has no utterances"))
    cases.append(([str(audio_folder), f"python:test_store:NoLatentMel?checkpoint={melrvq_dir}", tmp_path / "f",
                   "--latent"], "has no pre-quantization latent"))
    (tmp_path / "afile").write_text("x")
    cases.append(([str(audio_folder), codec, tmp_path / "afile"], "is a file, not a store directory"))
    for args, msg in cases:
        capsys.readouterr()
        assert _extract(*args, "--labels", "none") == 2
        err = capsys.readouterr().err.strip()
        assert msg in err and len(err.splitlines()) == 1, err
    # A different config into an existing store is refused; nothing already written is lost.
    out = tmp_path / "kept"
    assert _extract(str(audio_folder), codec, out, "--labels", "none") == 0
    before = (out / "codes.npy").read_bytes()
    capsys.readouterr()
    assert _extract(str(audio_folder), codec, out, "--labels", "none", "--limit", "2") == 2
    assert "different configuration" in capsys.readouterr().err
    assert (out / "codes.npy").read_bytes() == before
    assert main(["info", str(tmp_path / "e")]) == 2


def _planted_store(tmp_path, rng):
    n_utt, L, K, D = 5, 3, 8, 4
    nf = rng.integers(5, 12, n_utt)
    codes = rng.integers(0, K, (nf.sum(), L))
    tables = [rng.standard_normal((K, D)).astype(np.float32) for _ in range(L)]
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(n_utt)], "speaker": ["a", "b", "a", "b", "c"], "n_frames": nf})
    frames = pd.DataFrame({"phone": rng.choice(["a", "b"], nf.sum())})
    return write_store(tmp_path / "arr", codes, tables, utts, frames, latent=rng.standard_normal((nf.sum(), 6))), codes, tables, nf


def test_representations(tmp_path, rng):
    path, codes, tables, nf = _planted_store(tmp_path, rng)
    s = Store(path)
    np.testing.assert_array_equal(s.materialize("layer:2"), tables[1][codes[:, 1]])
    np.testing.assert_allclose(s.materialize("cumulative:3"), sum(tables[l][codes[:, l]] for l in range(3)), rtol=1e-6)
    np.testing.assert_array_equal(s.materialize("codes:3"), codes[:, 2])
    assert s.materialize("latent").shape == (nf.sum(), 6)
    # Streaming in small batches gives the same values as one read.
    parts = [x for _, x in s.iter_batches("cumulative:2", batch_frames=7)]
    np.testing.assert_allclose(np.concatenate(parts), s.materialize("cumulative:2"), rtol=1e-6)
    # Utterance pooling is the per-utterance mean.
    x = s.materialize("cumulative:2")
    bounds = np.r_[0, np.cumsum(nf)]
    ref = np.stack([x[a:b].mean(0) for a, b in zip(bounds[:-1], bounds[1:])])
    np.testing.assert_allclose(s.pooled("cumulative:2", batch_frames=4), ref, rtol=1e-5)
    np.testing.assert_allclose(s.pooled("cumulative:2"), ref, rtol=1e-5)
    # Frames know their utterance and sit at their centre times (1/50 s frames).
    np.testing.assert_array_equal(s.frame_utt, np.repeat(np.arange(len(nf)), nf))
    np.testing.assert_allclose(s.frames["time"].to_numpy()[: nf[0]], (np.arange(nf[0]) + 0.5) / 50.0)
    np.testing.assert_allclose(s.values("mean(cumulative:2)"), ref, rtol=1e-5)
    # Utterance labels broadcast to frames; a missing one is a clear error.
    assert list(s.frame_column("speaker")[: nf[0]]) == ["a"] * nf[0]
    with pytest.raises(Exception, match="no label column 'accent'"):
        s.frame_column("accent")


def test_corrupt_manifest_is_one_line_error(tmp_path, rng):
    from codeclens.errors import CodeclensError

    path, *_ = _planted_store(tmp_path, rng)
    (path / "manifest.json").write_text('{"complete": tr')
    with pytest.raises(CodeclensError, match="unreadable store manifest"):
        Store(path)


def test_encoded_shard_round_trip_labels_the_same_as_in_process(audio_folder, melrvq_dir, tmp_path):
    """The Ray engine's hand-over: codes saved by the codec step and labelled later, with the audio
    re-read from disk, give the very shard the local engine writes in one go."""
    from codeclens.codecs import load_codec
    from codeclens.corpora import load_corpus
    from codeclens.labels import load_labeller
    from codeclens.store.writer import ExtractConfig, encode_shard, label_shard, load_encoded, save_encoded, write_shard

    cfg = ExtractConfig(corpus=str(audio_folder), codec=f"melrvq?checkpoint={melrvq_dir}", out=str(tmp_path / "s"),
                        latent=False, labels=("loudness",))
    codec = load_codec(cfg.codec, "cpu")
    utts = list(load_corpus(cfg.corpus))
    labellers = [load_labeller("loudness")]
    for lb in labellers:
        lb.fit(utts)
    write_shard(utts, codec, labellers, cfg, tmp_path / "direct")
    enc = encode_shard(utts, codec, cfg, keep_audio=False)
    assert enc.skipped and len(enc.ids) == len(utts) - len(enc.skipped)  # the broken file is recorded
    save_encoded(enc, tmp_path / "enc.npz")
    back = load_encoded(tmp_path / "enc.npz")
    assert back.ids == enc.ids and all(np.array_equal(a, b) for a, b in zip(back.codes, enc.codes))
    assert all(a.dtype == b.dtype for a, b in zip(back.codes, enc.codes))
    label_shard(utts, back, labellers, cfg, tmp_path / "handed")
    for f in ("codes.npy",):
        np.testing.assert_array_equal(np.load(tmp_path / "direct" / f), np.load(tmp_path / "handed" / f))
    for f in ("utterances.parquet", "frames.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "direct" / f), pd.read_parquet(tmp_path / "handed" / f))
    assert (tmp_path / "direct" / "skipped.json").read_text() == (tmp_path / "handed" / "skipped.json").read_text()


def test_url_sink_commits_by_marker_and_fetches_identical_shards(audio_folder, melrvq_dir, tmp_path):
    """The staging protocol for object stores, through fsspec: a shard is there only once its marker
    is, files without the marker (a worker killed mid-upload) do not count, and the fetched shard
    equals the one written locally; the hand-over file round-trips through the URL too."""
    from codeclens.codecs import load_codec
    from codeclens.corpora import load_corpus
    from codeclens.store.sink import UrlSink
    from codeclens.store.writer import ExtractConfig, encode_shard, label_shard

    cfg = ExtractConfig(corpus=str(audio_folder), codec=f"melrvq?checkpoint={melrvq_dir}", out=str(tmp_path / "s"),
                        labels=("none",), engine="ray", staging=f"file://{tmp_path}/bucket")
    utts = list(load_corpus(cfg.corpus))[:3]
    enc = encode_shard(utts, load_codec(cfg.codec, "cpu"), cfg, keep_audio=False)
    sink = UrlSink(cfg.staging, "h")
    assert not sink.has_encoded(0) and not sink.committed(0)
    sink.put_encoded(0, enc)
    assert sink.has_encoded(0) and sink.get_encoded(0).ids == enc.ids
    (tmp_path / "bucket" / "h" / "shards" / "shard-00000").mkdir(parents=True)  # files, no marker
    assert not sink.committed(0)
    sink.commit(0, lambda dest: label_shard(utts, sink.get_encoded(0), [], cfg, dest))
    assert sink.committed(0)
    label_shard(utts, enc, [], cfg, tmp_path / "direct")
    sink.fetch(0, tmp_path / "fetched")
    for f in sorted((tmp_path / "direct").iterdir()):
        assert (tmp_path / "fetched" / f.name).read_bytes() == f.read_bytes(), f.name
    sink.clear()
    assert not (tmp_path / "bucket" / "h").exists()


def test_staging_needs_the_ray_engine():
    from codeclens.store.writer import ExtractConfig

    with pytest.raises(ValueError, match="Ray engine"):
        ExtractConfig(corpus="x", codec="y", out="z", staging="file:///tmp/s")
