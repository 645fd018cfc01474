"""A real small study with probes: the findings view, ``codeclens table`` and ``codeclens figures``."""

from __future__ import annotations

import html
import json
import re
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from codeclens.cli import main
from codeclens.study import load_study, run_study

from test_study import quiet


@pytest.fixture(scope="module")
def probe_study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("probe_study")
    study = root / "study.toml"
    study.write_text(textwrap.dedent("""
        [study]
        name = "p"
        threads = 1
        title = "Probes on ({corpora})"

        [extract]
        labels = ["phone"]

        [corpora.synth]
        spec = "synthetic?n=24&accents=en-us,en-gb&speakers_per_accent=3&seed=0&progress=0"

        [codecs.mel]
        spec = "melrvq"
        label = "melrvq fitted"
        fit = { corpus = "synth", layers = 3, codebook_size = 16, iters = 3 }

        [codecs.rand]
        spec = "melrvq?random_init=1&layers=3&codebook_size=16"
        label = "melrvq random"

        [analyses.probes]
        task = ["phone", "speaker"]
        repr = "layer:*"
        bootstrap = 30
        max_iter = 40

        [analyses.tokens]
        label = "phone"
        n_shuffles = 3

        [analyses.mi]
        targets = ["phone"]
        layers = "1,2"
        club = false
        n_shuffles = 2
    """))
    res = run_study(load_study(study), root / "run", progress=False, echo=quiet)
    assert res.ok, res
    return root / "run"


def test_findings_view_shows_the_probe_values(probe_study):
    page = (probe_study / "report.html").read_text()
    assert page.index('id="findings"') < page.index('id="overview"')
    assert "Probes on (synthetic)" in page
    probes = pd.read_csv(next(probe_study.glob("analyses/probes/*/probes.csv")))
    lin = probes[(probes.probe == "linear") & (probes.metric == "macro_f1") & (probes.kind == "layer")]
    cells = {html.unescape(k): float(v) for k, v in re.findall(r'data-finding="([^"]+)" data-value="([^"]+)"', page)}
    assert len(lin) == 2 * 2 * 3 and len(cells) == 2 * 2 * 3  # phone cells show the probe (tokens/MI in the tooltip)
    for r in lin.itertuples():
        assert cells[f"{r.store}|{r.layer}|{r.task}|macro-F1"] == pytest.approx(r.value, abs=0, rel=1e-15)
    # the random-weight codec is drawn as a control, visibly
    assert re.search(r'class="lens control"><h3>melrvq random <span class="badge">control: random weights', page)
    found = pd.read_csv(probe_study / "findings.csv")
    assert set(found["source"]) == {"probes", "tokens", "mi"}
    assert len(found[found["source"] == "probes"]) == len(lin)
    assert str(probe_study.resolve()) not in page


def test_table_and_figures_commands_on_a_run(probe_study, capsys):
    assert main(["table", str(probe_study)]) == 0
    df = pd.read_csv(probe_study / "tables" / "paper_table.csv")
    assert len(df) == 12 and set(df["control"]) == {True, False}
    before = {p: p.stat().st_mtime_ns for p in probe_study.rglob("*.csv")}
    for p in probe_study.rglob("*.pdf"):  # the run wrote PDFs already; show that figures redraws them
        p.unlink()
    assert main(["figures", str(probe_study), "--format", "pdf"]) == 0
    pdfs = sorted(p.name for p in probe_study.glob("analyses/*/*/*.pdf"))
    assert pdfs == ["association_curve.pdf", "mi.pdf", "probes_by_layer.pdf", "probes_heatmap.pdf", "token_metrics.pdf"]
    assert all(p.read_bytes().startswith(b"%PDF") for p in probe_study.glob("analyses/*/*/*.pdf"))
    # nothing was recomputed: the result tables are untouched (findings.csv is the report's own)
    after = {p: p.stat().st_mtime_ns for p in probe_study.rglob("*.csv")}
    assert {p: t for p, t in before.items() if p.name != "findings.csv"} == \
        {p: t for p, t in after.items() if p.name != "findings.csv"}
    bad = probe_study.parent / "style.mplstyle"
    assert main(["figures", str(probe_study), "--style", str(bad)]) == 2
    assert "no such style file" in capsys.readouterr().err
    assert main(["figures", str(probe_study.parent)]) == 2
