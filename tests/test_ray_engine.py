"""The Ray extraction engine on a local Ray instance: same store as the local engine, through
a crashed task and a killed driver. Few tests on purpose: each Ray start costs seconds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codeclens.cli import main
from codeclens.store import Store

pytest.importorskip("ray.data")  # `pip install codeclens[test]` has it; CI installs it

RUN_ONLY = {"started", "finished", "seconds_elapsed", "config", "config_hash", "versions", "host", "timestamp",
            "git", "command", "python", "cpu", "elapsed"}


def _args(corpus, codec, out, *extra):
    return ["extract", "--corpus", corpus, "--codec", codec, "--out", str(out), "--quiet", "--labels", "loudness",
            "--shard-size", "2", "--batch-seconds", "3", "--name", "s", *extra]


def _same_store(a: Path, b: Path) -> None:
    sa, sb = Store(a), Store(b)
    np.testing.assert_array_equal(sa.codes, sb.codes)
    pd.testing.assert_frame_equal(sa.utterances, sb.utterances)
    pd.testing.assert_frame_equal(sa.frames, sb.frames)
    ma = {k: v for k, v in sa.manifest.items() if k not in RUN_ONLY}
    mb = {k: v for k, v in sb.manifest.items() if k not in RUN_ONLY}
    assert ma == mb
    # The config differs only in how it was run; the content hash does not differ at all.
    assert sa.manifest["config_hash"] == sb.manifest["config_hash"]
    da = {k: v for k, v in sa.manifest["config"].items() if k not in ("engine", "workers", "label_workers", "staging", "out")}
    db = {k: v for k, v in sb.manifest["config"].items() if k not in ("engine", "workers", "label_workers", "staging", "out")}
    assert da == db


def test_ray_store_equals_local_and_survives_a_crashed_task(audio_folder, melrvq_dir, tmp_path, monkeypatch):
    codec = f"melrvq?checkpoint={melrvq_dir}"
    assert main(_args(str(audio_folder), codec, tmp_path / "local")) == 0
    fault = tmp_path / "crashed-once"
    monkeypatch.setenv("CODECLENS_RAY_FAULT", str(fault))
    assert main(_args(str(audio_folder), codec, tmp_path / "ray", "--engine", "ray", "--workers", "2")) == 0
    assert fault.exists()  # a worker did die mid-task; Ray restarted it and retried the shard
    _same_store(tmp_path / "local", tmp_path / "ray")
    s = Store(tmp_path / "ray")
    assert s.n_utterances == 6 and [str(x["where"]).endswith("broken.wav") for x in s.manifest["skipped"]] == [True]
    assert not (tmp_path / "ray" / "shards").exists()


def test_labelling_runs_in_its_own_actors_and_survives_their_crash(audio_folder, melrvq_dir, tmp_path, monkeypatch):
    """Labels are a CPU step after the codec actors: a labelling actor that dies is restarted, the
    shard is labelled from its saved codes (no re-encode) and the store still equals the local one.
    The workers commit to a staging URL (fsspec, the object-store protocol: marker after files)
    that the driver fetches from and clears."""
    codec = f"melrvq?checkpoint={melrvq_dir}"
    assert main(_args(str(audio_folder), codec, tmp_path / "local")) == 0
    fault = tmp_path / "label-crashed-once"
    monkeypatch.setenv("CODECLENS_RAY_FAULT", str(fault))
    monkeypatch.setenv("CODECLENS_RAY_FAULT_STAGE", "label")
    staging = tmp_path / "bucket"
    assert main(_args(str(audio_folder), codec, tmp_path / "ray", "--engine", "ray", "--workers", "1",
                      "--label-workers", "2", "--staging", f"file://{staging}")) == 0
    assert fault.exists()
    _same_store(tmp_path / "local", tmp_path / "ray")
    assert staging.is_dir() and not any(staging.iterdir())  # cleared once the store was complete


def test_killed_driver_rerun_completes_without_duplicates(audio_folder, melrvq_dir, tmp_path):
    codec = f"melrvq?checkpoint={melrvq_dir}"
    out = tmp_path / "ray"
    code = f"from codeclens.cli import main; main({_args(str(audio_folder), codec, out, '--engine', 'ray', '--workers', '1')!r})"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]))
    p = subprocess.Popen([sys.executable, "-c", code], env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if (out / "shards").is_dir() and any((out / "shards").glob("shard-*")):
                break
            time.sleep(0.2)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        p.wait()
    mf = json.loads((out / "manifest.json").read_text())
    killed_mid_run = not mf.get("complete")
    # Re-run: only the missing shards are encoded, and the store equals an uninterrupted local run.
    assert main(_args(str(audio_folder), codec, out, "--engine", "ray", "--workers", "1")) == 0
    assert main(_args(str(audio_folder), codec, tmp_path / "local")) == 0
    _same_store(tmp_path / "local", out)
    assert killed_mid_run or mf.get("complete")  # (on a very fast machine the first run may finish)
