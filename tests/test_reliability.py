"""Hostile and careless use (issue 17): nothing a user had is lost, every fault is one line.

Every case runs the real CLI in-process on real files and checks three things: exit code
2, exactly one ``codeclens: error:`` line on stderr, and every file that existed before is
byte-identical afterwards. Permission cases run with the effective uid of ``nobody`` when
the tests run as root (root ignores file modes); the full disk is a tiny tmpfs when
mounting is allowed, else a file-size limit (the same OSError path).
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np
import pytest

from codeclens.cli import main
from codeclens.corpora import load_corpus
from codeclens.errors import CodeclensError
from codeclens.store import Store, layout
from codeclens.store.arrays import write_store

NOBODY = 65534


# -- helpers ------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, bytes]:
    """Every regular file below ``roots`` with its bytes."""
    out: dict[str, bytes] = {}
    for r in map(Path, roots):
        for p in sorted(r.rglob("*")) if r.is_dir() else [r]:
            if p.is_file() and not p.is_symlink():
                out[str(p)] = p.read_bytes()
    return out


def one_error(rc: int, capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc == 2, err
    assert len(lines) == 1 and lines[0].startswith("codeclens: error: "), err
    for n in needles:
        assert n in lines[0], err
    return lines[0]


def extract(corpus, codec, out, *extra) -> int:
    return main(["extract", "--corpus", str(corpus), "--codec", codec, "--out", str(out), "--quiet",
                 "--labels", "none", *extra])


@contextlib.contextmanager
def unprivileged():
    """Run the block as a user that file modes apply to (root ignores them)."""
    if os.geteuid() != 0:
        yield
        return
    # Modules imported lazily by the commands are imported now, while the source is surely readable.
    import codeclens.analyses.probes  # noqa: F401
    import codeclens.codecs.melrvq  # noqa: F401
    import codeclens.store.writer  # noqa: F401

    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError:
        os.setegid(0)
        pytest.skip("root without CAP_SETUID: cannot drop privileges to test file modes")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def shared_tmp():
    """A folder every user can read (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="codeclens-test-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        for p in [d, *d.rglob("*")]:
            if p.is_dir() and not p.is_symlink():
                os.chmod(p, 0o755)
        shutil.rmtree(d)


def readable_copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    for p in [dest, *dest.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return dest


@pytest.fixture(scope="module")
def codec(melrvq_dir) -> str:
    return f"melrvq?checkpoint={melrvq_dir}"


@pytest.fixture(scope="module")
def good_store(tmp_path_factory, audio_folder, codec) -> Path:
    out = tmp_path_factory.mktemp("good") / "store"
    assert extract(audio_folder, codec, out) == 0
    return out


# -- 1-4: data loss -----------------------------------------------------------


def test_overwrite_keeps_the_old_store_until_the_new_one_is_complete(tmp_path, audio_folder, codec, capsys):
    out = tmp_path / "s"
    assert extract(audio_folder, codec, out) == 0
    before = snapshot(tmp_path)
    (tmp_path / "empty").mkdir()
    for args, needle in [
        ((audio_folder, "melrvq?checkpoint=/no/such/ckpt", out, "--overwrite", "--limit", "2"), "checkpoint not found"),
        ((audio_folder, "melrvq?chekpoint=x", out, "--overwrite"), "unknown option"),
        ((audio_folder, codec, out, "--overwrite", "--labels", "nosuchlabeller"), "nosuchlabeller"),
        ((tmp_path / "empty", codec, out, "--overwrite"), "has no utterances"),
    ]:
        capsys.readouterr()
        one_error(extract(*args), capsys, needle)
        assert snapshot(tmp_path) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]  # no staging, lock or old copy left

    # A valid replacement is built beside the old store and swapped in complete.
    assert extract(audio_folder, codec, out, "--overwrite", "--limit", "3") == 0  # the first is broken.wav
    assert Store(out).n_utterances == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "s"]

    # A crash between the two renames of the swap (old store moved away, new not in) is repaired.
    os.replace(out, layout.retired_path(out))
    assert extract(audio_folder, codec, out, "--limit", "3") == 0
    assert Store(out).n_utterances == 2 and not layout.retired_path(out).exists()


def test_overwrite_only_ever_replaces_a_store(tmp_path, audio_folder, codec, capsys):
    mine = tmp_path / "thesis"
    (mine / "chapters").mkdir(parents=True)
    (mine / "chapters" / "one.tex").write_text("years of work")
    (mine / "notes.json").write_text("[1, 2]")
    (mine / layout.MANIFEST).write_text("this is my manifest, not a store's")
    before = snapshot(tmp_path)
    for extra in ((), ("--overwrite",)):
        one_error(extract(audio_folder, codec, mine, *extra), capsys, "not a codeclens store")
        assert snapshot(tmp_path) == before
    # A store the user has put their own files into is not replaced either.
    store = tmp_path / "store"
    assert extract(audio_folder, codec, store) == 0
    (store / "my_notes.txt").write_text("keep")
    before = snapshot(tmp_path)
    one_error(extract(audio_folder, codec, store, "--overwrite", "--limit", "3"), capsys, "not part of a store", "my_notes.txt")
    assert snapshot(tmp_path) == before


def test_out_must_not_be_or_contain_the_corpus(tmp_path, audio_folder, codec, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(audio_folder, corpus)
    before = snapshot(tmp_path)
    one_error(extract(corpus, codec, corpus, "--overwrite"), capsys)
    assert snapshot(tmp_path) == before

    # A store folder that holds the corpus: replacing the store would delete the corpus.
    store = tmp_path / "store"
    assert extract(audio_folder, codec, store) == 0
    shutil.copytree(audio_folder, store / "audio")
    before = snapshot(tmp_path)
    one_error(extract(store / "audio", codec, store, "--overwrite"), capsys, "holds an input")
    assert snapshot(tmp_path) == before
    # ... and the same for a checkpoint inside --out.
    shutil.copytree(Path(codec.split("=", 1)[1]), store / "ckpt")
    before = snapshot(tmp_path)
    one_error(extract(audio_folder, f"melrvq?checkpoint={store / 'ckpt'}", store, "--overwrite"), capsys, "holds an input")
    assert snapshot(tmp_path) == before


def _labelled_store(root: Path) -> Path:
    import pandas as pd

    rng = np.random.default_rng(0)
    nf = rng.integers(20, 30, 8)
    codes = rng.integers(0, 8, (nf.sum(), 2))
    tables = [rng.standard_normal((8, 3)).astype(np.float32) for _ in range(2)]
    utts = pd.DataFrame({"id": [f"u{i}" for i in range(8)], "speaker": list("abcdabcd"), "n_frames": nf})
    frames = pd.DataFrame({"phone": rng.choice(["a", "b"], nf.sum())})
    return write_store(root, codes, tables, utts, frames)


def test_refused_analysis_leaves_its_folder_as_it_was(tmp_path, capsys):
    store = _labelled_store(tmp_path / "store")
    out = tmp_path / "probes"
    out.mkdir()
    (out / "config.json").write_text('{"analysis": "probes", "repr": "layer:1"}')
    (out / "result.json").write_text('{"analysis": "probes", "title": "earlier results"}')
    (out / "probes.csv").write_text("repr,score\nlayer:1,0.9\n")
    before = snapshot(tmp_path)
    for bad in (["--repr", "layer:99"], ["--task", "nosuchlabel"]):
        capsys.readouterr()
        rc = main(["probe", "--store", str(store), "--out", str(out), "--quiet", *bad])
        one_error(rc, capsys)
        assert snapshot(tmp_path) == before
    # A fresh --out of a refused run holds no config describing results it does not have.
    fresh = tmp_path / "fresh"
    one_error(main(["probe", "--store", str(store), "--out", str(fresh), "--quiet", "--repr", "layer:99"]), capsys,
              "layer 99")
    assert not (fresh / "config.json").exists()


# -- 6: damaged stores --------------------------------------------------------


def _edit_manifest(d: Path, **changes):
    m = json.loads((d / layout.MANIFEST).read_text())
    for k, v in changes.items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    (d / layout.MANIFEST).write_text(json.dumps(m))


def _shorter_codes(d: Path):
    c = np.load(d / layout.CODES)
    np.save(d / layout.CODES, c[:-3])
    _edit_manifest(d, n_frames=int(c.shape[0]) - 3)


def _code_out_of_range(d: Path):
    c = np.load(d / layout.CODES)
    c[5, 1] = 32  # codebooks have 32 entries
    np.save(d / layout.CODES, c)


def _truncate(name: str, keep: float):
    def cut(d: Path):
        b = (d / name).read_bytes()
        (d / name).write_bytes(b[: int(len(b) * keep)])

    return cut


DAMAGE = {
    "invalid_manifest": (lambda d: (d / layout.MANIFEST).write_text('{"format": 1,'), layout.MANIFEST),
    "manifest_not_object": (lambda d: (d / layout.MANIFEST).write_text("[1, 2, 3]"), layout.MANIFEST),
    "format_missing": (lambda d: _edit_manifest(d, format=None), "format"),
    "format_unknown": (lambda d: _edit_manifest(d, format=99), "format 99"),
    "codes_truncated": (_truncate(layout.CODES, 0.5), layout.CODES),
    "codes_empty": (_truncate(layout.CODES, 0.0), layout.CODES),
    "codes_shorter_than_frames": (_shorter_codes, layout.FRAMES),
    "codes_beyond_codebook": (_code_out_of_range, "outside the codebooks"),
    "junk_frames": (lambda d: (d / layout.FRAMES).write_bytes(b"PAR1 not really"), layout.FRAMES),
    "tables_truncated": (_truncate(layout.TABLES, 0.6), layout.TABLES),
    "table_missing_layer": (None, layout.TABLES),
}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_damaged_store_is_a_one_line_error_naming_the_file(case, good_store, tmp_path, capsys):
    d = tmp_path / "store"
    shutil.copytree(good_store, d)
    damage, needle = DAMAGE[case]
    if damage is None:  # tables written for fewer layers than the codec has
        from safetensors.numpy import load_file, save_file

        t = load_file(str(d / layout.TABLES))
        t.pop("layer_3")
        save_file(t, str(d / layout.TABLES))
    else:
        damage(d)
    before = snapshot(tmp_path)
    one_error(main(["info", str(d)]), capsys, needle)
    with pytest.raises(CodeclensError, match=str(d)):
        Store(d)
    assert snapshot(tmp_path) == before


def test_damaged_store_of_the_same_config_is_not_up_to_date(tmp_path, good_store, audio_folder, codec, capsys):
    out = tmp_path / "store"
    shutil.copytree(good_store, out)
    _code_out_of_range(out)
    before = snapshot(tmp_path)
    one_error(extract(audio_folder, codec, out), capsys, "codes.npy", "--overwrite")
    assert snapshot(tmp_path) == before
    assert extract(audio_folder, codec, out, "--overwrite") == 0
    assert np.array_equal(Store(out).codes, Store(good_store).codes)


# -- 5: unwritable outputs ----------------------------------------------------


def test_out_under_a_regular_file(tmp_path, audio_folder, codec, capsys):
    (tmp_path / "afile").write_text("keep me")
    store = _labelled_store(tmp_path / "store")
    before = snapshot(tmp_path)
    one_error(extract(audio_folder, codec, tmp_path / "afile" / "store"), capsys, "afile")
    one_error(main(["probe", "--store", str(store), "--out", str(tmp_path / "afile" / "p"), "--quiet"]), capsys, "afile")
    assert snapshot(tmp_path) == before


def test_out_in_a_read_only_folder(shared_tmp, audio_folder, melrvq_dir, capsys):
    audio = readable_copy(audio_folder, shared_tmp / "audio")
    ckpt = readable_copy(melrvq_dir, shared_tmp / "ckpt")
    store = _labelled_store(shared_tmp / "store")
    for p in [store, *store.rglob("*")]:
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    ro = shared_tmp / "ro"
    ro.mkdir()
    (ro / "old.txt").write_text("keep")
    os.chmod(ro, 0o555)
    before = snapshot(shared_tmp)
    with unprivileged():
        rc = extract(audio, f"melrvq?checkpoint={ckpt}", ro / "store")
        one_error(rc, capsys, "Permission denied", str(ro))
        rc = main(["probe", "--store", str(store), "--out", str(ro / "probes"), "--quiet"])
        one_error(rc, capsys, "Permission denied")
    assert snapshot(shared_tmp) == before


@contextlib.contextmanager
def small_disk(path: Path, kb: int):
    """A folder on a filesystem of ``kb`` KiB: yields a function that frees space (grows it)."""
    path.mkdir()
    mounted = os.geteuid() == 0 and shutil.which("mount") is not None and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={kb}k,mode=0755", "tmpfs", str(path)], capture_output=True
    ).returncode == 0
    if mounted:
        def free():
            subprocess.run(["mount", "-o", "remount,size=64m", str(path)], check=True)

        try:
            yield free
        finally:
            subprocess.run(["umount", "-l", str(path)], check=False)
        return
    # No mounting here: a file-size limit fails writes the same way (EFBIG instead of ENOSPC).
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (kb * 1024 // 4, old[1]))  # a file, not the disk, is limited
    try:
        yield lambda: resource.setrlimit(resource.RLIMIT_FSIZE, old)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_is_one_line_and_resumes(tmp_path, audio_folder, codec, good_store, capsys):
    disk = tmp_path / "disk"
    with small_disk(disk, 48) as free:
        rc = extract(audio_folder, codec, disk / "store", "--shard-size", "2")
        free()
        one_error(rc, capsys, str(disk))
        assert extract(audio_folder, codec, disk / "store", "--shard-size", "2") == 0
        s = Store(disk / "store")
        assert np.array_equal(s.codes, Store(good_store).codes)


def test_full_disk_during_an_analysis_is_one_line(tmp_path, capsys):
    store = _labelled_store(tmp_path / "store")
    disk = tmp_path / "disk"
    with small_disk(disk, 24) as free:
        (disk / "probes").mkdir()
        (disk / "probes" / "config.json").write_text('{"earlier": true}')
        before = snapshot(tmp_path)
        rc = main(["probe", "--store", str(store), "--out", str(disk / "probes"), "--quiet"])
        one_error(rc, capsys, str(disk / "probes"))
        assert (disk / "probes" / "config.json").read_bytes() == before[str(disk / "probes" / "config.json")]
        free()
        assert main(["probe", "--store", str(store), "--out", str(disk / "probes"), "--quiet"]) == 0


# -- 7: checkpoints -----------------------------------------------------------


class _Boom:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def tiny_encodec(tmp_path_factory) -> Path:
    from codeclens.codecs.testing import save_random_checkpoint

    out = tmp_path_factory.mktemp("encodec")
    save_random_checkpoint("encodec:24khz@1.5kbps?size=tiny", out, seed=0)
    return out


def test_damaged_or_malicious_checkpoints_are_one_line(tiny_encodec, tmp_path, capsys):
    trunc = tmp_path / "trunc"
    shutil.copytree(tiny_encodec, trunc)
    (trunc / "model.safetensors").write_bytes((tiny_encodec / "model.safetensors").read_bytes()[:1000])
    evil = tmp_path / "evil"
    shutil.copytree(tiny_encodec, evil)
    (evil / "model.safetensors").unlink()
    marker = tmp_path / "executed"
    boom = _Boom()
    boom.marker = marker
    (evil / "pytorch_model.bin").write_bytes(pickle.dumps(boom, protocol=2))
    before = snapshot(tmp_path)
    for d, needle in ((trunc, "SafetensorError"), (evil, "UnpicklingError")):
        one_error(main(["codec", "info", f"encodec:24khz@1.5kbps?checkpoint={d}"]), capsys, str(d), needle)
    assert not marker.exists()
    one_error(main(["codec", "info", "python:.relative.module:Codec"]), capsys, "absolute module name")
    assert snapshot(tmp_path) == before


# -- 8: concurrent extractions ------------------------------------------------


def test_second_extract_into_the_same_out_is_refused(tmp_path, audio_folder, codec, capsys):
    out = tmp_path / "store"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        layout.lock_path(out).write_text(str(other.pid))
        before = snapshot(tmp_path)
        one_error(extract(audio_folder, codec, out), capsys, "in use by another run", str(other.pid))
        assert snapshot(tmp_path) == before and not out.exists()
    finally:
        other.kill()
        other.wait()
    # The lock of a process that died is taken over.
    assert extract(audio_folder, codec, out) == 0
    assert not layout.lock_path(out).exists()


# -- 9, 10: honest records ----------------------------------------------------


def test_symlinked_and_unreadable_folders(shared_tmp, audio_folder, codec, capsys):
    wavs = sorted(audio_folder.rglob("u*.wav"))
    corpus = shared_tmp / "corpus"
    (corpus / "spkA").mkdir(parents=True)
    shutil.copy(wavs[0], corpus / "spkA" / "a.wav")
    elsewhere = shared_tmp / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(wavs[1], elsewhere / "b.wav")
    (corpus / "spkB").symlink_to(elsewhere, target_is_directory=True)  # e.g. a linked LibriSpeech subset
    (corpus / "spkA" / "loop").symlink_to(corpus, target_is_directory=True)
    (corpus / "dangling.wav").symlink_to(shared_tmp / "gone.wav")
    (corpus / "locked").mkdir()
    shutil.copy(wavs[2], corpus / "locked" / "c.wav")
    for p in [corpus, *corpus.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    os.chmod(corpus / "locked", 0o000)

    with unprivileged():
        c = load_corpus(str(corpus))
        ids = [u.id for u in c]
    assert ids == ["spkA/a", "spkB/b"]
    msgs = [p.message for p in c.problems]
    assert any("symlink loop" in m for m in msgs), msgs
    assert any("dangling.wav: broken symlink" in m for m in msgs), msgs
    assert any("locked: unreadable folder" in m and "Permission denied" in m for m in msgs), msgs

    # The store manifest records corpus and extraction skips in one shape.
    os.chmod(corpus / "locked", 0o755)
    (corpus / "spkA" / "broken.wav").write_text("not audio")
    out = shared_tmp / "store"
    assert extract(corpus, codec, out) == 0
    skipped = Store(out).manifest["skipped"]
    assert {tuple(sorted(r)) for r in skipped} == {("id", "message", "stage", "where")}
    stages = {r["stage"] for r in skipped}
    assert stages == {"corpus", "audio"}
    assert any(r["where"].endswith("broken.wav") and r["id"] == "spkA/broken" for r in skipped)


def test_no_utterances_says_why(tmp_path, codec, capsys):
    only_text = tmp_path / "text"
    only_text.mkdir()
    (only_text / "notes.txt").write_text("hello")
    one_error(extract(only_text, codec, tmp_path / "s1"), capsys, "has no utterances", "notes.txt: unsupported file name")
    bad_audio = tmp_path / "bad"
    bad_audio.mkdir()
    (bad_audio / "empty.wav").write_bytes(b"")
    (bad_audio / "text.wav").write_text("RIFF? no")
    err = one_error(extract(bad_audio, codec, tmp_path / "s2"), capsys, "no utterance could be read")
    assert "empty.wav: empty file" in err and "text.wav: unreadable audio" in err


def test_textgrid_causes_are_named(tmp_path):
    from codeclens.corpora.textgrid import TextGridError, read_textgrid, write_textgrid
    from codeclens.corpora.base import Interval

    good = tmp_path / "g.TextGrid"
    write_textgrid(good, {"phones": [Interval(0.0, 0.5, "a"), Interval(0.5, 1.0, "b")]}, 1.0)
    text = good.read_text()
    (tmp_path / "t.TextGrid").write_text(text[: len(text) // 2])
    with pytest.raises(TextGridError, match="truncated TextGrid"):
        read_textgrid(tmp_path / "t.TextGrid")
    (tmp_path / "n.TextGrid").write_text(text.replace("xmax = 0.5", 'xmax = "soon"', 1))
    with pytest.raises(TextGridError, match="non-numeric"):
        read_textgrid(tmp_path / "n.TextGrid")


# -- 11, 13, 14: studies and validation ---------------------------------------


def _study(tmp: Path, audio_folder: Path, head: str = 'name = "t"', corpus: str | None = None, extra: str = "") -> Path:
    d = tmp / "studydir"
    d.mkdir(exist_ok=True)
    p = d / "study.toml"
    p.write_text(textwrap.dedent(f"""
        [study]
        {head}

        [corpora.audio]
        spec = "{corpus or f'folder:{audio_folder}'}"

        [codecs.rand]
        spec = "melrvq?random_init=1&layers=2&codebook_size=16"
    """) + textwrap.dedent(extra))
    return p


def test_study_paths_are_confined(tmp_path, audio_folder, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.csv").write_text("a,b\n1,2\n")
    for path in ("../secret.csv", "/etc/passwd", str(tmp_path / "secret.csv")):
        p = _study(tmp_path, audio_folder, extra=f'[[published]]\npath = "{path}"\nsource = "x"\n')
        one_error(main(["run", str(p), "--check"]), capsys, "outside the study's folder")
    (tmp_path / "studydir" / "ours.csv").write_text("a\n1\n")
    p = _study(tmp_path, audio_folder, extra='[[published]]\npath = "ours.csv"\nsource = "x"\n')
    assert main(["run", str(p), "--check"]) == 0
    before = snapshot(tmp_path)
    for name in ("../escaped", "a/b", "..", "/abs"):
        p = _study(tmp_path, audio_folder, head=f'name = "{name}"')
        before[str(p)] = p.read_bytes()
        one_error(main(["run", str(p)]), capsys, "name")
    assert snapshot(tmp_path) == before and not (tmp_path / "escaped").exists()


def test_check_verifies_every_path(tmp_path, audio_folder, capsys):
    for corpus, needle in (
        (f"librispeech:{tmp_path}/no/LibriSpeech", "not found"),
        (f"librispeech:{audio_folder}?alignments={tmp_path}/no/alignments", "alignments not found"),
        (f"manifest:{tmp_path}/no.csv", "not found"),
    ):
        p = _study(tmp_path, audio_folder, corpus=corpus)
        one_error(main(["run", str(p), "--check"]), capsys, needle)
    p = _study(tmp_path, audio_folder, extra=f'[codecs.ck]\nspec = "melrvq?checkpoint={tmp_path}/nockpt"\n')
    one_error(main(["run", str(p), "--check"]), capsys, "checkpoint not found")


def test_nan_is_refused(tmp_path, audio_folder, codec, capsys):
    one_error(extract(audio_folder, codec, tmp_path / "s", "--batch-seconds", "nan"), capsys, "batch_seconds", "nan")
    one_error(extract(f"librispeech:{audio_folder}?tolerance=nan", codec, tmp_path / "s"), capsys, "tolerance")
    p = _study(tmp_path, audio_folder, extra="[extract]\nbatch_seconds = nan\n")
    one_error(main(["run", str(p), "--check"]), capsys, "batch_seconds", "nan")
    assert not (tmp_path / "s").exists()


def test_negative_counts_are_refused(tmp_path, good_store, capsys):
    before = snapshot(tmp_path)
    rc = main(["ablate", "--store", str(good_store), "--out", str(tmp_path / "a"), "--n-boot", "-1", "--quiet"])
    one_error(rc, capsys, "n_boot", ">= 0")
    assert snapshot(tmp_path) == before


# -- 12: modes ----------------------------------------------------------------


def test_atomic_writes_follow_the_umask(tmp_path, audio_folder, codec):
    from codeclens.util.atomic import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {})
        with atomic_dir(tmp_path / "d") as t:
            (t / "x").write_text("x")
        assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
        assert extract(audio_folder, codec, tmp_path / "s") == 0
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "s").iterdir()}
        assert set(modes.values()) == {0o644}, modes
        os.umask(0o077)
        write_json(tmp_path / "b.json", {})
        assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
