"""The HTML report: sections, figures, tables, audio, published numbers, provenance, escaping."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd

from codeclens.report.html import table_html, write_report
from codeclens.study import load_study, run_study

from codeclens.report.findings import Finding, finder

from test_study import EVIL, quiet, write_study


@finder("studytest")
def studytest_findings(out: Path, source: str) -> list[Finding]:
    """The test analysis' per-speaker mean code as a layer-1 finding per speaker (for the findings view)."""
    df = pd.read_csv(out / "per_speaker.csv")
    return [Finding(str(r.store), "", 1, str(r.speaker), "mean code", float(r.mean_code), float("nan"), float("nan"),
                    0.0, bool(r.mean_code > 0), min(1.0, float(r.mean_code) / 16), source, 0) for r in df.itertuples()]


def make_report(tmp_path: Path, audio_folder: Path) -> Path:
    """A real small run whose corpus has a speaker named ``<script>alert(1)</script>``."""
    study = write_study(tmp_path, audio_folder, corpus_kind="studytestcorpus", extra=f"""
[[published]]
path = "pub.csv"
source = "Sadok et al. 2025 {EVIL}, Table 1"
caption = "AnCoGen results"
""")
    pd.DataFrame({"model": ["ancogen_bigcodec", EVIL], "vc_cos": [0.68, 0.74]}).to_csv(tmp_path / "pub.csv", index=False)
    res = run_study(load_study(study), tmp_path / "run", progress=False, echo=quiet)
    assert res.ok and res.report is not None
    return res.report


def test_report_contents_and_escaping(tmp_path, audio_folder):
    report = make_report(tmp_path, audio_folder)
    root = report.parent
    page = report.read_text()
    # the hostile speaker name came through the store into the analysis table, the summary,
    # the title and the published table, and is escaped everywhere
    assert EVIL not in page
    assert "<script>alert" not in page
    escaped = html.escape(EVIL, quote=True)
    assert page.count(escaped) >= 5
    per_speaker = pd.read_csv(root / "analyses" / "studytest" / "audio" / "per_speaker.csv")
    assert EVIL in set(per_speaker["speaker"])
    # exactly one script element: the report's own sorter
    assert len(re.findall(r"<script\b", page)) == 1
    # a section per analysis entry, with its figure, table, audio and published table
    assert 'id="s-studytest"' in page and 'id="s-bystore"' in page
    imgs = re.findall(r'<img src="([^"]+)"', page)
    assert imgs and all((root / html.unescape(p)).is_file() for p in imgs)
    assert all(p.endswith(".png") for p in imgs)  # the SVG beside a PNG is linked, not shown twice
    audios = re.findall(r'<audio controls preload="metadata" src="([^"]+)"', page)
    assert len(audios) == 2 and all((root / html.unescape(p)).is_file() for p in audios)
    assert page.count('class="sortable"') >= 5
    assert "Published vs ours" in page and "Source: <cite>Wang et al. 2026, Table 1</cite>" in page
    assert f"Source: <cite>Sadok et al. 2025 {escaped}, Table 1</cite>" in page
    assert (root / "published" / "00-pub.csv").is_file()
    # provenance: study file, versions, git, hardware, step durations
    run = json.loads((root / "run.json").read_text())
    assert "Package versions" in page and "torch" in page and "Hardware" in page and "git revision" in page
    assert all(html.escape(s["id"]) in page for s in run["steps"])
    assert "[corpora.audio]" in page
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network


def test_report_lists_failures_and_guards_paths(tmp_path, audio_folder):
    report = make_report(tmp_path, audio_folder)
    root = report.parent
    res_file = root / "analyses" / "studytest" / "audio" / "result.json"
    res = json.loads(res_file.read_text())
    res["artifacts"].append({"path": "../../../../etc/passwd", "caption": "escape attempt", "kind": "table", "group": ""})
    res["artifacts"].append({"path": "gone.png", "caption": "missing", "kind": "figure", "group": ""})
    res_file.write_text(json.dumps(res))
    run = json.loads((root / "run.json").read_text())
    run["steps"][-1].update(status="failed", error=f"boom {EVIL}", this_run="failed")
    assert run["steps"][-2]["id"] == "studytest:audio"
    run["steps"][-2].update(this_run="blocked")  # an earlier run's result.json is still there
    (root / "run.json").write_text(json.dumps(run))
    page = write_report(root).read_text()
    assert page.count("Not updated by this run (blocked)") == 1
    assert 'href="../../../../etc/passwd"' not in page and "Missing file: ../../../../etc/passwd" in page
    assert 'src="analyses/studytest/audio/gone.png"' not in page
    assert "Steps that did not finish" in page and f"boom {html.escape(EVIL)}" in page


def test_table_sort_keys_and_truncation():
    df = pd.DataFrame({"name": [EVIL, "b"], "value": [0.123456789, 12.0], "n": [3, 1], "na": [None, 1.5]})
    t = table_html(df)
    assert EVIL not in t and html.escape(EVIL) in t
    assert 'data-v="0.123456789">0.1235</td>' in t and 'data-v="3">3</td>' in t
    big = pd.DataFrame({"x": range(1000)})
    t = table_html(big, max_rows=10)
    assert t.count("<tr>") == 11 and "First 10 of 1000 rows" in t
