"""``--workers 2``: count-table work side by side gives the numbers of one task after the other.

Known answers: on a planted store (phone in layer 1, speaker in 2, F0 in 3) the probes of
``workers=2`` (a task's probes beside its controls, the classification tasks beside f0 / f0_st) are
equal, row for row and bit for bit, to those of ``workers=1``, and the planted carriers still win;
the tasks are split into the classification and the numeric chain only where every task takes the
count-table path; the CLI takes the option and refuses a negative one in one line.
"""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest

from codeclens.analyses.probes import ProbeConfig, run_probes
from codeclens.analyses.probes.run import expand_tasks, task_chains
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return Store(planted_store(tmp_path_factory.mktemp("sbs") / "s", n_utt=200, n_speakers=50, n_layers=4,
                               codebook_size=32, dim=8, noise=0.2, seed=3))


def test_chains(store):
    cfg = ProbeConfig(task=("phone", "speaker", "f0"), workers=2)
    assert task_chains([store], expand_tasks(cfg), cfg) == [["phone", "speaker"], ["f0", "f0_st"]]
    one = ProbeConfig(task=("phone", "speaker", "f0"), workers=1)
    assert task_chains([store], expand_tasks(one), one) == [["phone", "speaker", "f0", "f0_st"]]
    frames = ProbeConfig(task=("phone", "f0"), repr="cumulative:2", workers=2)  # frame path: never side by side
    assert task_chains([store], expand_tasks(frames), frames) == [["phone", "f0", "f0_st"]]
    only = ProbeConfig(task=("phone", "speaker"), workers=2)  # no numeric task: nothing to pair with
    assert task_chains([store], expand_tasks(only), only) == [["phone", "speaker"]]


def test_side_by_side_equals_one_after_the_other(store):
    kw = dict(task=("phone", "speaker", "f0"), bootstrap=200)
    seq = run_probes([store], ProbeConfig(workers=1, **kw))
    par = run_probes([store], ProbeConfig(workers=2, **kw))
    pd.testing.assert_frame_equal(seq, par, check_exact=True)
    lin = par[(par["probe"] == "linear") & par["metric"].isin(["macro_f1", "r2"])]
    best = lin.loc[lin.groupby("task")["value"].idxmax(), ["task", "representation"]]
    assert dict(zip(best["task"], best["representation"])) == {
        "phone": "layer:1", "speaker": "layer:2", "f0": "layer:3", "f0_st": "layer:3"}


def test_cli_option(store, tmp_path):
    exe = [sys.executable, "-m", "codeclens", "probe", "--store", str(store.path), "--task", "phone,f0",
           "--bootstrap", "50", "--quiet"]
    a = subprocess.run(exe + ["--out", str(tmp_path / "a"), "--workers", "2"], capture_output=True, text=True)
    assert a.returncode == 0, a.stderr
    b = subprocess.run(exe + ["--out", str(tmp_path / "b")], capture_output=True, text=True)
    assert b.returncode == 0, b.stderr
    assert (tmp_path / "a" / "probes.csv").read_bytes() == (tmp_path / "b" / "probes.csv").read_bytes()
    bad = subprocess.run(exe + ["--out", str(tmp_path / "c"), "--workers", "-1"], capture_output=True, text=True)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "workers must be >= 0" in bad.stderr.strip().splitlines()[-1]
