"""``codeclens probe`` end to end on a real (melrvq) store, and its one-line errors."""

from __future__ import annotations

import json

import pandas as pd

from codeclens.cli import main


def test_probe_cli_on_real_store(tmp_path, audio_folder, melrvq_dir, capsys):
    store = tmp_path / "store"
    rc = main(["extract", "--corpus", str(audio_folder), "--codec", f"melrvq?checkpoint={melrvq_dir}",
               "--out", str(store), "--labels", "none", "--quiet"])
    assert rc == 0
    out = tmp_path / "probe"
    argv = ["probe", "--store", str(store), "--task", "speaker", "--repr", "layer:*,cumulative:4", "--out", str(out),
            "--quiet", "--bootstrap", "100"]
    assert main(argv) == 0
    df = pd.read_csv(out / "probes.csv")
    lin = df[(df.probe == "linear") & (df.metric == "accuracy")]
    assert list(lin["representation"]) == ["layer:1", "layer:2", "layer:3", "layer:4", "cumulative:4"]
    assert lin["value"].between(0, 1).all() and (lin["split"] == "split_utt").all()
    assert df[df.probe == "lookup"]["layer"].sort_values().tolist() == [1, 1, 2, 2, 3, 3, 4, 4]  # acc + macro-F1
    res = json.loads((out / "result.json").read_text())
    assert res["analysis"] == "probes" and res["summary"]
    for a in res["artifacts"]:
        assert (out / a["path"]).is_file()
    assert json.loads((out / "config.json").read_text())["task"] == ["speaker"]
    # A re-run finds the finished task and does not refit it.
    cached = list((out / "tasks").glob("speaker-*.csv"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert main(argv) == 0
    assert cached[0].stat().st_mtime_ns == mtime


def test_probe_cli_errors_are_one_line(tmp_path, capsys):
    from codeclens.analyses.probes.synthetic import planted_store

    p = planted_store(tmp_path / "s", n_utt=20, seed=0)
    for argv, msg in (
        (["--task", "tone"], "no label column 'tone'"),
        (["--repr", "layer:9"], "has 4"),
        (["--level", "sentence"], "level must be one of"),
        (["--task", "phone", "--backend", "sklearn", "--l1", "0.1"], "only supported by the torch backend"),
    ):
        rc = main(["probe", "--store", str(p), "--out", str(tmp_path / "o"), "--quiet", *argv])
        err = capsys.readouterr().err
        assert rc == 2, argv
        assert msg in err and err.count("\n") == 1, err
    rc = main(["probe", "--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "not a feature store" in capsys.readouterr().err
