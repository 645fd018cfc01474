"""Study files and the runner: validation, skipping, re-running what changed, resuming.

A tiny analysis (``studytest``) is registered here so the runner is tested on
the real analysis contract without depending on the heavier analyses; it
writes a real table, figure, audio clip and published table computed from the
stores it is given.
"""

from __future__ import annotations

import dataclasses
import json
import os
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses import ANALYSES, Analysis, AnalysisResult, Artifact
from codeclens.cli import main
from codeclens.corpora import CORPORA
from codeclens.corpora.folder import FolderCorpus
from codeclens.corpora.base import Utterance
from codeclens.spec import parse_spec
from codeclens.study import StudyError, load_study, run_study
from codeclens.store import Store

EVIL = "<script>alert(1)</script>"
#: Set by tests to make the next studytest run raise (an exception instance).
PLANTED = {"raise": None, "runs": 0}


@dataclasses.dataclass(frozen=True)
class StudyTestConfig:
    scale: float = 1.0
    """Multiplies the reported statistic."""
    layer: int = 1
    """1-based layer whose codes are summarised."""
    seed: int = 0
    """Unused; present so the study's seed default is exercised."""
    hold_mb: int = 0
    """Megabytes written into one array while running (a planted peak resident set)."""
    fail: str = ""
    """Raise RuntimeError(fail) while running (a planted failure that travels in the config)."""
    die: bool = False
    """Kill the running process with SIGKILL (as the OOM killer does); only for steps in their own process."""

    def __post_init__(self):
        if self.layer < 1:
            raise ValueError("layer must be >= 1")


@ANALYSES.register("studytest")
class StudyTestAnalysis(Analysis):
    name = "studytest"
    title = "Study test: codes per speaker"
    Config = StudyTestConfig

    def run(self, stores, cfg, out, progress=True):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import soundfile as sf

        PLANTED["runs"] += 1
        if cfg.hold_mb:
            held = np.ones(cfg.hold_mb << 20, dtype=np.uint8)  # every page touched: resident
            del held
        if PLANTED["raise"] is not None:
            exc, PLANTED["raise"] = PLANTED["raise"], None
            raise exc
        if cfg.fail:
            raise RuntimeError(cfg.fail)
        if cfg.die:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGKILL)
        rows = []
        for s in stores:
            u = s.utterances
            codes = np.asarray(s.codes[:, cfg.layer - 1])
            spk = np.repeat(u["speaker"].to_numpy(), u["n_frames"].to_numpy())
            for name in sorted(set(spk)):
                rows.append({"store": s.name, "speaker": name, "frames": int((spk == name).sum()),
                             "mean_code": float(codes[spk == name].mean()) * cfg.scale})
        df = pd.DataFrame(rows)
        df.to_csv(out / "per_speaker.csv", index=False)
        fig, ax = plt.subplots(figsize=(4, 3))
        for st, g in df.groupby("store"):
            ax.bar(g["speaker"].astype(str) + "\n" + str(st), g["frames"], label=str(st))
        ax.set_xlabel("speaker")
        ax.set_ylabel("frames")
        fig.tight_layout()
        fig.savefig(out / "frames.png")
        fig.savefig(out / "frames.svg")
        plt.close(fig)
        t = np.arange(8000) / 16000
        sf.write(out / "tone.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)
        pd.DataFrame({"codec": ["x"], "macro_f1_pct": [81.11],
                      "source": ["Wang et al. 2026, Table 1"]}).to_csv(out / "published.csv", index=False)
        return AnalysisResult(
            self.name, self.title,
            artifacts=(
                Artifact("per_speaker.csv", f"Frames and mean code per speaker (layer {cfg.layer})", "table"),
                Artifact("frames.png", "Frames per speaker", "figure"),
                Artifact("frames.svg", "Frames per speaker", "figure"),
                Artifact("tone.wav", "A 220 Hz tone", "audio", group="examples"),
            ),
            summary=f"{len(df)} speaker rows; speakers: {', '.join(map(str, df['speaker']))}",
            published=(Artifact("published.csv", "Reference F1 (published) vs ours", "table"),),
        )


@CORPORA.register("studytestcorpus")
class RenamedSpeakers(FolderCorpus):
    """A folder corpus whose first speaker gets a hostile name (for escaping tests)."""

    def __iter__(self):
        for u in super().__iter__():
            yield dataclasses.replace(u, speaker=EVIL if u.speaker == "spk1" else u.speaker, accent="en-" + u.speaker)


def write_study(tmp: Path, audio_folder: Path, scale: float = 1.0, extra: str = "", analyses: str | None = None,
                corpus_kind: str = "folder", isolate: bool = False) -> Path:
    """The test study; ``isolate`` (the runner's default, off here) runs its heavy steps in their own
    processes, where the in-process plants (PLANTED, patched functions) cannot reach."""
    if analyses is None:
        analyses = f"""
        [analyses.studytest]
        scale = {scale}

        [analyses.bystore]
        kind = "studytest"
        per = "store"
        codecs = ["mel"]
        """
    text = textwrap.dedent(f"""
        [study]
        name = "t"
        threads = 1
        isolate = {str(isolate).lower()}
        title = "Test study {EVIL}"
        description = "A study with a hostile label {EVIL}"

        [extract]
        labels = ["none"]
        shard_size = 4

        [corpora.audio]
        spec = "{corpus_kind}:{audio_folder}"

        [codecs.mel]
        spec = "melrvq"
        label = "melrvq fitted"
        fit = {{ corpus = "audio", layers = 2, codebook_size = 16, iters = 3 }}

        [codecs.rand]
        spec = "melrvq?random_init=1&layers=2&codebook_size=16"
        {analyses}
        {extra}
    """)
    p = tmp / "study.toml"
    p.write_text(text)
    return p


def quiet(_msg):
    pass


def test_validation_errors_are_one_line(tmp_path, audio_folder, capsys):
    good = write_study(tmp_path, audio_folder)
    study = load_study(good)
    assert [c.name for c in study.codecs] == ["mel", "rand"]
    assert study.codec("rand").control  # random_init marks a control
    base = good.read_text()
    rand = 'spec = "melrvq?random_init=1&layers=2&codebook_size=16"'
    cases = [
        (base.replace('name = "t"', 'nmae = "t"'), "[study]: unknown option(s) nmae; known: description, device, isolate, name, seed, threads, title"),
        (base.replace(f'spec = "folder:{audio_folder}"', 'spec = "synthetc?n=3"'), "unknown corpus 'synthetc'"),
        (base.replace('spec = "folder:', 'spek = "folder:'), "unknown key(s) spek; known: spec, limit, extract"),
        (base.replace(rand, 'spec = "encodek:24khz"'), "unknown codec 'encodek'"),
        (base.replace(rand, 'spec = "melrvq?random_init=1&bogus=1"'), "unknown option(s) bogus"),
        (base.replace('corpus = "audio"', 'corpus = "nope"'), "corpus 'nope' is not a study corpus"),
        (base + '\n[analyses.x]\nkind = "nosuch"\n', "unknown analysis 'nosuch'; known:"),
        (base.replace("scale = 1.0", "scael = 1.0"),
         "unknown option(s) scael; known: codecs, corpora, die, fail, hold_mb, kind, layer, per, scale, seed"),
        (base.replace("scale = 1.0", "layer = 0"), "layer must be >= 1"),
        (base.replace('codecs = ["mel"]', 'codecs = ["nope"]'), "codecs: 'nope' is not in the study"),
        (base.replace("shard_size = 4", "shard_sise = 4"), "unknown option(s) shard_sise"),
        (base + "\n[bogus]\nx = 1\n", "unknown top-level table(s) bogus"),
    ]
    for i, (text, msg) in enumerate(cases):
        assert text != base
        bad = tmp_path / f"bad{i}.toml"
        bad.write_text(text)
        with pytest.raises(StudyError) as ei:
            load_study(bad)
        assert msg in str(ei.value), (msg, str(ei.value))
        assert "\n" not in str(ei.value)
        rc = main(["run", str(bad), "--out", str(tmp_path / "never"), "--quiet"])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("codeclens: error:"), err
    assert not (tmp_path / "never").exists()
    bad = tmp_path / "syntax.toml"
    bad.write_text("[study\n")
    assert main(["run", str(bad)]) == 2
    assert main(["run", str(tmp_path / "missing.toml")]) == 2


def test_run_skip_rerun_and_force(tmp_path, audio_folder):
    study_file = write_study(tmp_path, audio_folder)
    out = tmp_path / "run"
    assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 0
    log1 = (out / "run.log").read_text()
    ids = [s["id"] for s in json.loads((out / "run.json").read_text())["steps"]]
    assert ids == ["corpus:audio", "fit:mel", "extract:audio/mel", "extract:audio/rand", "studytest:audio",
                   "bystore:audio/mel"]
    assert all(f"{i}: done" in log1 for i in ids)
    res = json.loads((out / "analyses" / "studytest" / "audio" / "result.json").read_text())
    assert res["analysis"] == "studytest"
    table = pd.read_csv(out / "analyses" / "studytest" / "audio" / "per_speaker.csv")
    # both codecs' stores were given to the per-corpus analysis; 6 readable files, the broken one skipped
    assert sorted(set(table["store"])) == ["melrvq fitted", "rand"]
    assert table.groupby("store")["frames"].sum().nunique() == 1
    manifest = json.loads((out / "stores" / "audio" / "mel" / "manifest.json").read_text())
    assert manifest["n_utterances"] == 6 and len(manifest["skipped"]) == 1
    assert "checkpoint=" in manifest["config"]["codec"]

    # a second run skips every step
    res2 = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res2.ran == [] and res2.skipped == ids
    assert (out / "run.log").read_text().count("up to date, skipped") == len(ids)

    # a damaged store is not up to date: its extraction and what reads it run again
    codes_file = out / "stores" / "audio" / "rand" / "codes.npy"
    good = codes_file.read_bytes()
    codes_file.write_bytes(good[: len(good) // 2])
    res_d = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res_d.ran == ["extract:audio/rand", "studytest:audio"]
    assert "store needs rebuilding" in (out / "run.log").read_text()
    assert codes_file.read_bytes() == good

    # changing one analysis option re-runs only that analysis
    write_study(tmp_path, audio_folder, scale=2.0)
    res3 = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res3.ran == ["studytest:audio"]
    table2 = pd.read_csv(out / "analyses" / "studytest" / "audio" / "per_speaker.csv")
    np.testing.assert_allclose(table2["mean_code"], 2 * table["mean_code"])

    # --force on the melrvq fit re-runs it and everything that reads it, nothing else
    res4 = run_study(load_study(study_file), out, force=["fit:mel"], progress=False, echo=quiet)
    assert res4.ran == ["fit:mel", "extract:audio/mel", "studytest:audio", "bystore:audio/mel"]
    assert "extract:audio/rand" in res4.skipped
    assert main(["run", str(study_file), "--out", str(out), "--force", "nosuchstep", "--quiet"]) == 2
    assert main(["run", str(study_file), "--out", str(out / "run.json"), "--quiet"]) == 2  # a file, not a folder

    # one run per directory: a live run's lock is respected, a dead one's is taken over
    import subprocess
    import sys

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (out / ".lock").write_text(str(sleeper.pid))
        assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 2
    finally:
        sleeper.kill()
        sleeper.wait()
    assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 0
    assert not (out / ".lock").exists()


@pytest.mark.parametrize("isolate", [False, True])
def test_each_step_records_its_own_peak_resident_set(tmp_path, audio_folder, isolate):
    """A planted 400 MB step is recorded at >= 400 MB over the baseline; the steps after it are
    not (a process-lifetime maximum, getrusage's, would carry it into every later step). In the
    runner's process the high-water mark is reset per step; a step in its own process has its own."""
    from codeclens.study.rss import reset_peak

    if not reset_peak():
        pytest.skip("no resettable high-water mark (not Linux)")
    study_file = write_study(tmp_path, audio_folder, isolate=isolate, analyses="""
        [analyses.big]
        kind = "studytest"
        hold_mb = 400

        [analyses.small]
        kind = "studytest"
        """)
    out = tmp_path / "run"
    assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 0
    steps = {s["id"]: s for s in json.loads((out / "run.json").read_text())["steps"]}
    assert all(s["peak_rss_of"] == "step" and s["peak_rss_bytes"] > 0 for s in steps.values())
    assert {s["process"] for i, s in steps.items() if i != "corpus:audio"} == {"own" if isolate else "runner"}
    big, small = steps["big:audio"]["peak_rss_bytes"], steps["small:audio"]["peak_rss_bytes"]
    base = max(steps["extract:audio/mel"]["peak_rss_bytes"], small)
    assert big >= small + (400 << 20) * 0.95, (big, small)
    assert small < big - (300 << 20)
    assert base < big
    assert steps["small:audio"]["rss_start_bytes"] < small
    assert "peak RSS" in (out / "run.log").read_text()


def test_isolated_steps_match_fail_die_and_resume(tmp_path, audio_folder, monkeypatch):
    """Steps in their own processes: the same outputs as in the runner's process; a failure is recorded with
    its message and traceback, a process killed by SIGKILL (as the OOM killer does) is a failed step, and
    neither stops the independent steps; an interrupted resumable analysis resumes from its cache."""
    analyses = """
        [analyses.studytest]
        codecs = ["rand"]
        {bad}

        [analyses.resumetest]
        codecs = ["rand"]
        """
    bad = """
        [analyses.fails]
        kind = "studytest"
        fail = "planted failure in a child"

        [analyses.dies]
        kind = "studytest"
        die = true
        """
    inproc = tmp_path / "inproc"
    inproc.mkdir()
    run_study(load_study(write_study(inproc, audio_folder, analyses=analyses.format(bad=""))), inproc / "run",
              progress=False, echo=quiet, report=False)
    study_file = write_study(tmp_path, audio_folder, isolate=True, analyses=analyses.format(bad=bad))
    out = tmp_path / "run"
    monkeypatch.setenv("CODECLENS_TEST_INTERRUPT_AT", "0")
    with pytest.raises(KeyboardInterrupt):
        run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    rec = json.loads((out / ".steps" / "resumetest__audio.json").read_text())
    assert rec["status"] == "running"
    parts = out / "analyses" / "resumetest" / "audio"
    assert (parts / "computed.txt").read_text() == "0\n"
    monkeypatch.delenv("CODECLENS_TEST_INTERRUPT_AT")
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert sorted(res.failed) == ["dies:audio", "fails:audio"]
    assert res.ran == ["resumetest:audio"]
    assert "studytest:audio" in res.skipped  # done before the interruption
    assert "resumetest:audio: resuming" in (out / "run.log").read_text()
    assert (parts / "computed.txt").read_text() == "0\n1\n2\n"  # part 0 not computed again
    steps = {s["id"]: s for s in json.loads((out / "run.json").read_text())["steps"]}
    assert steps["fails:audio"]["error"] == "RuntimeError: planted failure in a child"
    assert steps["dies:audio"]["error"].startswith("the step's process was killed by SIGKILL")
    log = (out / "run.log").read_text()
    assert "Traceback" in log and "planted failure in a child" in log
    mine = pd.read_csv(out / "analyses" / "studytest" / "audio" / "per_speaker.csv")
    pd.testing.assert_frame_equal(mine, pd.read_csv(inproc / "run" / "analyses" / "studytest" / "audio" / "per_speaker.csv"))
    for name in ("mel", "rand"):
        np.testing.assert_array_equal(np.load(out / "stores" / "audio" / name / "codes.npy"),
                                      np.load(inproc / "run" / "stores" / "audio" / name / "codes.npy"))
    # Fixed, the failed steps run; nothing else does.
    fixed = bad.replace('fail = "planted failure in a child"', "scale = 2.0").replace("die = true", "scale = 3.0")
    write_study(tmp_path, audio_folder, isolate=True, analyses=analyses.format(bad=fixed))
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert sorted(res.ran) == ["dies:audio", "fails:audio"] and res.ok


def test_interrupted_and_failed_runs_resume(tmp_path, audio_folder, capsys):
    study_file = write_study(tmp_path, audio_folder)
    out = tmp_path / "run"
    PLANTED["raise"] = KeyboardInterrupt()
    assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 130  # Ctrl-C inside an analysis
    rec = json.loads((out / ".steps" / "studytest__audio.json").read_text())
    assert rec["status"] == "running"
    assert "interrupted" in (out / "run.log").read_text()
    res = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res.ran == ["studytest:audio", "bystore:audio/mel"]
    assert len(res.skipped) == 4

    # a step that fails is recorded, the others go on, the CLI exits 2 with one line, a re-run resumes
    write_study(tmp_path, audio_folder, scale=3.0)
    PLANTED["raise"] = RuntimeError("planted failure")
    capsys.readouterr()
    assert main(["run", str(study_file), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("codeclens: error: 1 step(s) failed (studytest:audio)"), err[-1]
    assert not any("Traceback" in ln for ln in err)
    assert "planted failure" in (out / "run.log").read_text()
    assert (out / "report.html").is_file()
    res = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res.ran == ["studytest:audio"] and res.ok


@dataclasses.dataclass(frozen=True)
class ResumeTestConfig:
    parts: int = 3
    """Parts of work, each cached as a file under out/parts."""


@ANALYSES.register("resumetest")
class ResumeTestAnalysis(Analysis):
    """Caches each finished part; raises after the first part while PLANTED['raise'] is set."""

    name = "resumetest"
    title = "Study test: a resumable analysis"
    Config = ResumeTestConfig
    resumable = True
    computed: list[int] = []

    def run(self, stores, cfg, out, progress=True):
        for i in range(cfg.parts):
            f = out / "parts" / f"{i}.txt"
            if f.is_file():
                continue
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(str(i))
            self.computed.append(i)
            with open(out / "computed.txt", "a") as log:  # seen by the test when the step ran in its own process
                log.write(f"{i}\n")
            if os.environ.get("CODECLENS_TEST_INTERRUPT_AT") == str(i):  # reaches a step's own process too
                raise KeyboardInterrupt
            if PLANTED["raise"] is not None:
                exc, PLANTED["raise"] = PLANTED["raise"], None
                raise exc
        return AnalysisResult(self.name, self.title)


def test_resumable_analysis_keeps_its_cache_only_for_the_same_key(tmp_path, audio_folder):
    """An interrupted resumable analysis continues from its cache; a changed option or --force
    starts it from an empty folder; a non-resumable one always does."""
    analyses = """
        [analyses.resumetest]
        codecs = ["rand"]
        parts = {parts}
        """
    study_file = write_study(tmp_path, audio_folder, analyses=analyses.format(parts=3))
    out = tmp_path / "run"
    ResumeTestAnalysis.computed.clear()
    PLANTED["raise"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert ResumeTestAnalysis.computed == [0]
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert res.ran == ["resumetest:audio"] and ResumeTestAnalysis.computed == [0, 1, 2]
    assert "resumetest:audio: resuming" in (out / "run.log").read_text()
    ResumeTestAnalysis.computed.clear()
    write_study(tmp_path, audio_folder, analyses=analyses.format(parts=2))
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert res.ran == ["resumetest:audio"] and ResumeTestAnalysis.computed == [0, 1]
    assert not (out / "analyses" / "resumetest" / "audio" / "parts" / "2.txt").exists()
    ResumeTestAnalysis.computed.clear()
    run_study(load_study(study_file), out, force=["resumetest"], progress=False, echo=quiet, report=False)
    assert ResumeTestAnalysis.computed == [0, 1]
    # The non-resumable studytest starts from an empty folder after an interruption.
    study_file = write_study(tmp_path, audio_folder)
    PLANTED["raise"] = KeyboardInterrupt()
    with pytest.raises(KeyboardInterrupt):
        run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    stray = out / "analyses" / "studytest" / "audio" / "stray.txt"
    stray.write_text("left by the interrupted run")
    run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert not stray.exists()


def test_interrupted_extraction_resumes(tmp_path, audio_folder):
    """A crash inside extraction keeps finished shards; the re-run completes the same store."""
    import codeclens.store.writer as writer

    study_file = write_study(tmp_path, audio_folder, analyses="")
    out = tmp_path / "run"
    real = writer.write_shard
    calls = {"n": 0}

    def crashing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*a, **k)

    writer.write_shard = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(load_study(study_file), out, progress=False, echo=quiet)
    finally:
        writer.write_shard = real
    assert len(list((out / "stores" / "audio" / "mel" / "shards").iterdir())) == 1
    res = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert "extract:audio/mel" in res.ran and "fit:mel" in res.skipped
    assert "resuming" in (out / "run.log").read_text()
    codes = np.load(out / "stores" / "audio" / "mel" / "codes.npy")
    fresh = tmp_path / "fresh"
    run_study(load_study(study_file), fresh, progress=False, echo=quiet)
    # the refit is seeded, so the resumed store equals an uninterrupted one
    np.testing.assert_array_equal(codes, np.load(fresh / "stores" / "audio" / "mel" / "codes.npy"))


def test_interrupted_synthetic_corpus_resumes(tmp_path, audio_folder):
    """A synthetic corpus written into the run keeps its finished utterances when its step is
    re-run after an interruption (same key), instead of being deleted and synthesized again."""
    study_file = write_study(tmp_path, audio_folder, analyses="")
    study_file.write_text(study_file.read_text().replace(
        f'spec = "folder:{audio_folder}"', 'spec = "synthetic?n=2&accents=en-us&speakers_per_accent=1&seed=0&progress=0"'))
    out = tmp_path / "run"
    assert run_study(load_study(study_file), out, progress=False, echo=quiet, report=False).ok
    corpus = out / "corpora" / "audio"
    first, second = sorted(corpus.rglob("*.wav"))
    # As an interruption leaves it: the step recorded as running, the corpus incomplete.
    rec_file = out / ".steps" / "corpus__audio.json"
    rec = json.loads(rec_file.read_text())
    rec["status"] = "running"
    rec_file.write_text(json.dumps(rec))
    (corpus / "COMPLETE").unlink()
    data = second.read_bytes()
    second.unlink()
    stamp = first.stat().st_mtime_ns
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert res.ok and res.ran[0] == "corpus:audio"
    assert "corpus:audio: resuming" in (out / "run.log").read_text()
    assert first.stat().st_mtime_ns == stamp and second.read_bytes() == data


def test_demo_study_is_valid():
    from codeclens.cli.demo import demo_study_path

    study = load_study(demo_study_path())
    kinds = {a.kind for a in study.analyses}
    # the demo goes through every registered analysis (add a new one to demo.toml)
    assert kinds == set(ANALYSES.names()) - {"studytest", "resumetest"}  # test-only analyses
    assert {parse_spec(c.spec).kind for c in study.codecs} == {"melrvq", "encodec", "dac", "mimi", "speechtokenizer"}
    repo_copy = Path(__file__).resolve().parents[1] / "studies" / "demo.toml"
    assert repo_copy.read_text() == demo_study_path().read_text()


def test_real_data_studies_parse(tmp_path):
    """The shipped real-data study files pass validation (their data paths replaced by a folder;
    plug-in codecs, whose modules the user provides, left out)."""
    import tomllib

    from codeclens.study.config import parse_study

    root = Path(__file__).resolve().parents[1] / "studies"
    for name in ("librispeech_probing.toml", "librispeech_tokens.toml", "accent_sae.toml"):
        raw = tomllib.loads((root / name).read_text())
        assert raw["study"]["name"] and raw["corpora"] and raw["codecs"]
        for c in raw["corpora"].values():
            c["spec"] = f"folder:{tmp_path}"
        raw["codecs"] = {n: k for n, k in raw["codecs"].items() if not k["spec"].startswith("python:")}
        for k in raw["codecs"].values():
            k.pop("fit", None)
        for p in raw.get("published", []):
            assert (root / p["path"]).is_file() and p["source"]
        study = parse_study(raw, str(root / name))
        assert study.analyses and all(p.source for p in study.published)


def test_save_random_codec_checkpoint(tmp_path, audio_folder):
    """A random-weight control is saved once and every step loads that checkpoint."""
    study_file = write_study(tmp_path, audio_folder, analyses="", extra="""
[codecs.encodec]
spec = "encodec:24khz@1.5kbps?random_init=1&size=tiny&seed=3"
save_random = true
""")
    out = tmp_path / "run"
    res = run_study(load_study(study_file), out, progress=False, echo=quiet)
    assert res.ok and "random:encodec" in res.ran
    manifest = json.loads((out / "stores" / "audio" / "encodec" / "manifest.json").read_text())
    spec = manifest["codec"]["spec"]
    assert "random_init" not in spec and f"checkpoint={(out / 'codecs' / 'encodec').resolve()}" in spec
    assert manifest["codec"]["n_layers"] == 2
    # the saved weights reproduce the stored codes through the ordinary loader
    import torch

    from codeclens.store.writer import ExtractConfig, extract

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the study (threads = 1): near-tie codes depend on summation order
    try:
        again = extract(ExtractConfig(corpus=f"folder:{audio_folder}", codec=spec, out=str(tmp_path / "again"),
                                      labels=("none",), shard_size=4), progress=False, log=quiet)
    finally:
        torch.set_num_threads(threads)
    np.testing.assert_array_equal(np.load(again / "codes.npy"), np.load(out / "stores" / "audio" / "encodec" / "codes.npy"))


def test_changed_extraction_keeps_the_old_store_until_the_new_one_is_complete(tmp_path, audio_folder):
    """An extract step whose configuration changed is rebuilt beside the old store and swapped in
    at the end: a rebuild that is interrupted loses nothing (the old store still opens, same codes)."""
    import codeclens.store.writer as writer

    study_file = write_study(tmp_path, audio_folder, analyses="")
    out = tmp_path / "run"
    run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    store = out / "stores" / "audio" / "mel"
    before = np.load(store / "codes.npy")
    study_file.write_text(study_file.read_text().replace("shard_size = 4", "shard_size = 3"))
    real = writer.write_shard

    def crashing(*a, **k):
        raise KeyboardInterrupt

    writer.write_shard = crashing
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    finally:
        writer.write_shard = real
    np.testing.assert_array_equal(Store(store).codes, before)  # untouched by the interrupted rebuild
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert "extract:audio/mel" in res.ran
    assert Store(store).manifest["config"]["shard_size"] == 3
    np.testing.assert_array_equal(Store(store).codes, before)  # same audio, same codes


def test_refit_codec_at_the_same_path_rebuilds_its_store(tmp_path, audio_folder):
    """The fitted codec keeps its folder when refit; its new token is part of the store's identity,
    so the store is rebuilt (beside the old one) instead of being declared up to date."""
    study_file = write_study(tmp_path, audio_folder, analyses="")
    out = tmp_path / "run"
    run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    store = out / "stores" / "audio" / "mel"
    h0 = Store(store).manifest["config_hash"]
    study_file.write_text(study_file.read_text().replace("iters = 3", "iters = 4"))
    res = run_study(load_study(study_file), out, progress=False, echo=quiet, report=False)
    assert "fit:mel" in res.ran and "extract:audio/mel" in res.ran
    assert Store(store).manifest["config_hash"] != h0
