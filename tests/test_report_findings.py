"""The findings view and the paper table, on probes with a planted answer; table rendering."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from codeclens.analyses import ANALYSES
from codeclens.analyses.probes import ProbeConfig
from codeclens.analyses.probes.synthetic import planted_store
from codeclens.cli import main
from codeclens.report import findings as fnd
from codeclens.report.paper import paper_table, published_match, to_latex, to_markdown
from codeclens.report.tables import decimals_for, order_columns, relative_path, scrub_text
from codeclens.store import Store


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory) -> Path:
    """A probes result on a store whose layer 1 carries phone and layer 2 speaker (layers 3-4 random)."""
    root = tmp_path_factory.mktemp("probe_run")
    store = planted_store(root / "store", n_utt=48, n_speakers=6, n_layers=4, carriers={"phone": 1, "speaker": 2},
                          name="planted")
    cfg = ProbeConfig(task=("phone", "speaker"), repr="layer:*", bootstrap=50, max_iter=60, device="cpu")
    ANALYSES.get("probes")()([Store(store)], cfg, root / "probes", progress=False)
    return root / "probes"


def test_probe_findings_recover_the_planted_layers(probe_run):
    found = fnd.probe_findings(probe_run, "probes")
    by = {(f.attribute, f.layer): f for f in found}
    assert set(by) == {(t, k) for t in ("phone", "speaker") for k in (1, 2, 3, 4)}
    assert by[("phone", 1)].above and by[("speaker", 2)].above
    # the random layers do not clear max(majority, uniform) chance on the interval's low end
    assert not by[("phone", 3)].above and not by[("phone", 4)].above
    assert not by[("speaker", 3)].above and not by[("speaker", 4)].above
    assert by[("phone", 1)].strength > 5 * max(by[("phone", 3)].strength, 0.01)
    # values are the probes table's, not a copy that could drift
    df = pd.read_csv(probe_run / "probes.csv")
    row = df[(df.probe == "linear") & (df.metric == "macro_f1") & (df.task == "phone") & (df.layer == 1)].iloc[0]
    f = by[("phone", 1)]
    assert f.value == row["value"] and f.lo == row["ci_low"] and f.hi == row["ci_high"]
    assert f.baseline == max(row["chance_majority"], row["chance_uniform"])
    lines = [t for t, _ in fnd.headlines(found, ["planted"], set())]
    assert any(t.startswith("planted: phone is carried best by layer 1 ") for t in lines), lines
    assert any(t.startswith("planted: speaker is carried best by layer 2 ") for t in lines), lines


def test_findings_on_a_random_layer_say_no_layer_above_baseline():
    f = fnd.Finding("c", "x?random_init=1", 1, "phone", "macro-F1", 0.05, 0.02, 0.07, 0.06, False, 0.0, "probes", 0)
    lines = fnd.headlines([f], ["c"], set())
    assert lines == [("c (random-weight control): phone: no layer above its baseline (macro-F1; best layer 1: "
                      "0.050 [0.020, 0.070]).", "probes")]


def test_paper_table_cli_csv_markdown_latex(probe_run, tmp_path, capsys):
    out = tmp_path / "tables"
    assert main(["table", str(probe_run), "--out", str(out)]) == 0
    df = pd.read_csv(out / "paper_table.csv")
    assert set(df["task"]) == {"phone", "speaker"} and sorted(set(df["layer"])) == [1, 2, 3, 4]
    probes = pd.read_csv(probe_run / "probes.csv")
    lin = probes[(probes.probe == "linear") & (probes.metric == "macro_f1") & (probes.kind == "layer")]
    merged = df.merge(lin, on=["task", "layer"], suffixes=("", "_p"))
    assert len(merged) == 8 and np.allclose(merged["value"], merged["value_p"])
    assert (df["ci_low"] <= df["ci_high"]).all() and df["control_task"].notna().all()
    # a planted store is no published setting: no published value, and the note says why
    assert df["published"].isna().all() and df["note"].str.contains("no published").all()
    md = (out / "paper_table.md").read_text()
    assert md.startswith("| codec | task | metric | layer | score [95% CI] |") and md.count("\n") == 2 + 8
    tex = (out / "paper_table.tex").read_text()
    assert "\\begin{tabular}" in tex and "\\toprule" in tex and tex.count("\\\\") == 1 + 8
    assert "paper_table.csv" in capsys.readouterr().out
    assert main(["table", str(tmp_path / "nope")]) == 2
    assert "no such run directory" in capsys.readouterr().err


def test_published_values_only_where_the_setting_matches():
    lib = "librispeech:data/LibriSpeech/train-clean-100?alignments=x"
    col, note = published_match("encodec:24khz@6kbps", lib, "phone", "macro_f1")
    assert col == "encodec_phone_f1" and "Denn" in note
    assert published_match("speechtokenizer", lib, "speaker", "accuracy")[0] == "st_spk_acc"
    assert published_match("encodec:24khz@12kbps", lib, "phone", "macro_f1")[0] is None
    assert published_match("encodec:24khz@6kbps?random_init=1", lib, "phone", "macro_f1")[0] is None
    assert published_match("encodec:24khz@6kbps", "synthetic?n=96", "phone", "macro_f1")[0] is None
    col, note = published_match("encodec:24khz@6kbps", lib, "f0", "r2")
    assert col is None and "voicing" in note
    assert published_match("dac:16khz", lib, "phone", "macro_f1")[0] is None


def test_latex_and_markdown_escape():
    df = pd.DataFrame([{"codec": "a_b & c|d", "control": False, "task": "phone", "metric": "macro_f1", "layer": 1,
                        "value": 0.61234, "ci_low": 0.57, "ci_high": 0.65, "chance": 0.1, "control_task": 0.2,
                        "published": float("nan"), "note": "x"}])
    tex = to_latex(df)
    assert "a\\_b \\& c|d" in tex and "0.612 [0.570, 0.650]" in tex
    assert "a_b & c\\|d" in to_markdown(df)


def test_digits_follow_the_interval():
    assert decimals_for(0.57, 0.65) == 3  # half-width 0.04 -> two significant digits
    assert decimals_for(10.0, 40.0) == 0
    assert decimals_for(0.5, 0.5) == 6 and decimals_for(float("nan"), 1) is None


def test_paths_become_relative_to_the_run(tmp_path):
    root = tmp_path / "run"
    (root / "codecs").mkdir(parents=True)
    inside = str(root / "codecs" / "dac")
    assert relative_path(inside, root) == "codecs/dac"
    assert relative_path("/home/someone/data/x.wav", root) == "…/data/x.wav"
    assert scrub_text(f"dac:16khz?checkpoint={inside}&seed=0", root) == "dac:16khz?checkpoint=codecs/dac&seed=0"
    assert scrub_text(f"librispeech:/data/LS/test-clean?alignments=/data/al", root) == \
        "librispeech:…/LS/test-clean?alignments=…/data/al"
    assert scrub_text("see https://example.org/a/b and layer:1-8", root) == "see https://example.org/a/b and layer:1-8"


def test_results_come_before_long_columns():
    df = pd.DataFrame(columns=["store", "codec", "spec", "value", "layer", "ci_high", "ci_low", "metric", "n_test"])
    assert list(order_columns(df).columns) == ["codec", "layer", "metric", "value", "ci_low", "ci_high", "n_test",
                                               "store", "spec"]
