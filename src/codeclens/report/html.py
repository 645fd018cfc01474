"""One HTML report per study run, built from the run directory alone.

``report.html`` sits at the top of the run directory and refers to the figures,
audio, tables and pages of each analysis by relative path, so the folder can
be moved or zipped as a whole. It needs nothing from the network: CSS and the
small table-sorting script are inline.

Every string that can come from user data (speaker and label names inside
tables, captions, summaries, specs, paths, the study file itself) goes through
:func:`esc` (``html.escape``) before it reaches the page, and no script ever
assigns it to ``innerHTML``.
"""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import pandas as pd

from ..util.atomic import atomic_path, write_text
from .tables import cell, readable, scrub_text

REPORT = "report.html"
MAX_ROWS = 400
PREVIEW_ROWS = 15
"""Rows a table shows before "show all": enough to read the shape, few enough to scroll past."""
_TABLE_EXT = {".csv", ".tsv", ".parquet", ".json"}
_AUDIO_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".mp3": "audio/mpeg", ".ogg": "audio/ogg"}


def esc(value: Any) -> str:
    """Escape anything for HTML text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def href(path: str) -> str:
    """A relative file path as a safe, escaped URL."""
    return esc(quote(path.replace("\\", "/"), safe="/._-~"))


# -- tables -------------------------------------------------------------------


def read_table(path: Path) -> pd.DataFrame:
    ext = path.suffix.lower()
    if ext == ".parquet":
        return pd.read_parquet(path)
    if ext == ".tsv":
        return pd.read_csv(path, sep="\t")
    if ext == ".json":
        return pd.read_json(path)
    return pd.read_csv(path)


def table_html(df: pd.DataFrame, max_rows: int = MAX_ROWS, caption: str = "", root: Path | None = None,
               preview: int = PREVIEW_ROWS, csv_href: str = "", reorder: bool = True) -> str:
    """A sortable, filterable table (click a header; type in the filter box); all cells escaped.

    The first ``preview`` rows show; up to ``max_rows`` are in the page behind "show all", and the
    full table is one click away at ``csv_href``. Columns are ordered results-first, absolute
    paths made relative to ``root`` and numbers rounded to their interval (see
    :mod:`codeclens.report.tables`)."""
    df, digits = readable(df, root, reorder)
    n = len(df)
    parts = [f'<div class="tbl" data-preview="{int(preview)}">']
    if caption:
        parts.append(f'<p class="cap">{esc(caption)}</p>')
    tools = []
    if n > 5:
        tools.append('<input type="search" class="filter" placeholder="filter rows" aria-label="filter rows">')
    if n > preview:
        shown = min(n, max_rows)
        tools.append(f'<button type="button" class="showall" data-n="{shown}">show all {shown} rows</button>')
    if csv_href:
        tools.append(f'<a class="csv" href="{esc(csv_href)}">full table (CSV, {n} rows)</a>')
    if tools:
        parts.append('<div class="tools">' + " ".join(tools) + "</div>")
    parts.append('<div class="tablewrap"><table class="sortable">')
    parts.append("<thead><tr>" + "".join(f'<th scope="col" title="sort">{esc(c)}</th>' for c in df.columns) + "</tr></thead>")
    parts.append("<tbody>")
    cols = list(df.columns)
    for i, row in enumerate(df.head(max_rows).itertuples(index=False, name=None)):
        cells = []
        for c, v in zip(cols, row):
            d = digits.get(c)
            text, key = cell(v, d[i] if d else None)
            attr = f' data-v="{esc(key)}"' if key else ""
            cells.append(f"<td{attr}>{esc(text)}</td>")
        hidden = ' class="more" hidden' if i >= preview else ""
        parts.append(f"<tr{hidden}>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    if n > max_rows:
        parts.append(f'<p class="note">First {max_rows} of {n} rows in this page; the full table is in the CSV.</p>')
    parts.append("</div>")
    return "".join(parts)


# -- sections -----------------------------------------------------------------


def _inside(base: Path, rel: str) -> Path | None:
    """``base/rel`` if it is a file inside ``base`` (artifact paths never leave their folder)."""
    try:
        p = (base / rel).resolve()
        if base.resolve() in p.parents and p.is_file():
            return p
    except (OSError, ValueError):
        pass
    return None


def _artifact(a: dict[str, Any], adir: Path, root: Path, listed: set[str]) -> str:
    path = a.get("path", "")
    kind = a.get("kind", "table")
    cap = a.get("caption", "")
    f = _inside(adir, path)
    rel = str((adir / path).relative_to(root)) if f else path
    if f is None:
        return f'<p class="missing">Missing file: {esc(path)} ({esc(cap)})</p>'
    link = f'<a href="{href(rel)}">{esc(Path(path).name)}</a>'
    if kind == "figure":
        if f.suffix.lower() == ".svg" and str(Path(path).with_suffix(".png")) in listed:
            return ""  # shown as the PNG beside it, linked from there
        extra = ""
        svg = Path(path).with_suffix(".svg")
        if f.suffix.lower() == ".png" and (adir / svg).is_file():
            extra = f' · <a href="{href(str((adir / svg).relative_to(root)))}">SVG</a>'
        return (f'<figure><a href="{href(rel)}"><img src="{href(rel)}" alt="{esc(cap or Path(path).name)}"></a>'
                f"<figcaption>{esc(cap)} <span class=\"file\">({link}{extra})</span></figcaption></figure>")
    if kind == "audio":
        mime = _AUDIO_MIME.get(f.suffix.lower(), "audio/wav")
        return (f'<div class="audio"><audio controls preload="metadata" src="{href(rel)}" data-type="{mime}"></audio>'
                f'<span class="cap">{esc(cap or Path(path).stem)} <span class="file">({link})</span></span></div>')
    if kind == "page":
        return f'<p class="page">Page: <a href="{href(rel)}">{esc(cap or Path(path).name)}</a></p>'
    if f.suffix.lower() in _TABLE_EXT:
        try:
            df = read_table(f)
        except Exception as e:  # a broken table must not break the report
            return f'<p class="missing">Could not read {esc(path)}: {esc(e)}</p>'
        return (f'<div class="table"><p class="cap">{esc(cap)} <span class="file">({link})</span></p>'
                f"{table_html(df, root=root, csv_href=href(_csv_copy(f, df, rel, root)))}</div>")
    return f'<p class="file">{esc(cap)} ({link})</p>'


def _csv_copy(f: Path, df: pd.DataFrame, rel: str, root: Path) -> str:
    """Relative path of the table as CSV: the file itself, or a copy written beside the report."""
    if f.suffix.lower() == ".csv":
        return rel
    dest = root / "report_files" / (rel.replace("/", "__").rsplit(".", 1)[0] + ".csv")
    if not (dest.is_file() and dest.stat().st_mtime_ns >= f.stat().st_mtime_ns):  # rewritten only when stale
        with atomic_path(dest, ".csv") as tmp:
            df.to_csv(tmp, index=False)
    return str(dest.relative_to(root))


LISTEN_FIRST = ("original", "decode", "donor")
"""Reference players first in every row: the original audio, the codec's unedited decode, the donor."""


def _listening_grid(arts: list[dict], adir: Path, root: Path) -> tuple[str, list[dict]]:
    """Audio examples that come as a set per utterance (one folder: original.wav, decode.wav and
    one file per edit) as a table of side-by-side players, a row per utterance; returns the HTML
    and the artifacts left for the ordinary layout."""
    sets: dict[str, list[dict]] = {}
    for a in arts:
        if a.get("kind") == "audio":
            sets.setdefault(str(Path(a.get("path", "")).parent), []).append(a)
    sets = {d: v for d, v in sets.items() if len(v) >= 2 and any(Path(x["path"]).stem in LISTEN_FIRST for x in v)}
    if not sets:
        return "", arts
    taken = {id(a) for v in sets.values() for a in v}
    by_parent: dict[str, dict[str, dict[str, dict]]] = {}
    for d, v in sets.items():
        by_parent.setdefault(str(Path(d).parent), {})[Path(d).name] = {Path(a["path"]).stem: a for a in v}
    html_out = ['<h4>Listen: original, unedited decode and each edit, side by side</h4>']
    for parent, utts in by_parent.items():
        stems = list(dict.fromkeys(st for u in utts.values() for st in u))
        stems = [s_ for s_ in LISTEN_FIRST if s_ in stems] + [s_ for s_ in stems if s_ not in LISTEN_FIRST]
        head = "".join(f'<th scope="col">{esc(s_.replace("_", " "))}</th>' for s_ in stems)
        rows = []
        for utt, files in utts.items():
            cells = []
            for s_ in stems:
                a = files.get(s_)
                f = _inside(adir, a["path"]) if a else None
                if f is None:
                    cells.append("<td></td>")
                    continue
                rel = str((adir / a["path"]).relative_to(root))
                mime = _AUDIO_MIME.get(f.suffix.lower(), "audio/wav")
                cells.append(f'<td><audio controls preload="metadata" src="{href(rel)}" data-type="{mime}"></audio></td>')
            rows.append(f'<tr><th scope="row">{esc(utt)}</th>{"".join(cells)}</tr>')
        first = next(iter(next(iter(utts.values())).values()))
        label = str(first.get("group", "")).split(" / ")[0] or ("" if parent in (".", "") else parent)
        cap = f"<caption>{esc(label)}</caption>" if label else ""
        html_out.append(f'<div class="tablewrap"><table class="listen">{cap}<thead><tr><th>utterance</th>{head}</tr>'
                        f'</thead><tbody>{"".join(rows)}</tbody></table></div>')
    return "".join(html_out), [a for a in arts if id(a) not in taken]


def published_html(path: Path, rel: str, caption: str = "", source: str = "", root: Path | None = None) -> str:
    """A published-numbers table with its source quoted above it."""
    try:
        df = read_table(path)
    except Exception as e:
        return f'<p class="missing">Could not read {esc(rel)}: {esc(e)}</p>'
    sources = [source] if source else []
    if "source" in df.columns:
        sources += [s for s in dict.fromkeys(df["source"].dropna().astype(str)) if s not in sources]
        if df["source"].nunique() <= 1:
            df = df.drop(columns=["source"])
    quote_html = "".join(f"<blockquote class=\"source\">Source: <cite>{esc(s)}</cite></blockquote>" for s in sources)
    return (f'<div class="published"><p class="cap">{esc(caption)} <span class="file">(<a href="{href(rel)}">'
            f"{esc(Path(rel).name)}</a>)</span></p>{quote_html}{table_html(df, root=root, reorder=False)}</div>")


def _result_html(step: dict[str, Any], root: Path) -> str:
    adir = root / step["out"]
    rfile = adir / "result.json"
    head = f'<h3 id="{esc(_anchor(step["id"]))}">{esc(step["id"].split(":", 1)[1])}</h3>'
    if not rfile.is_file():
        why = step.get("error") or step.get("this_run") or step.get("status")
        return head + f'<p class="missing">No result ({esc(why)}).</p>'
    res = json.loads(rfile.read_text())
    out = [head]
    meta = [f"{res.get('seconds', 0):.1f} s"]
    cfg_file = adir / "config.json"
    if cfg_file.is_file():
        meta.append(f'<a href="{href(str(cfg_file.relative_to(root)))}">config</a>')
    meta.append(f'<a href="{href(str(rfile.relative_to(root)))}">result.json</a>')
    out.append(f'<p class="meta">{" · ".join(meta)}</p>')
    if step.get("this_run") in ("blocked", "failed"):
        # e.g. an upstream extraction failed: these files are an earlier run's, not this one's
        out.append(f'<p class="missing">Not updated by this run ({esc(step["this_run"])}): '
                   "the results below are from an earlier run.</p>")
    if res.get("summary"):
        out.append(summary_html(scrub_text(str(res["summary"]), root)))
    arts = res.get("artifacts", [])
    listed = {a.get("path", "") for a in arts}
    grid, arts = _listening_grid(arts, adir, root)
    groups: dict[str, list[dict]] = {}
    for a in arts:
        groups.setdefault(a.get("group", ""), []).append(a)
    for g, items in groups.items():
        if g:
            out.append(f"<h4>{esc(g)}</h4>")
        figs = [a for a in items if a.get("kind") == "figure"]
        audio = [a for a in items if a.get("kind") == "audio"]
        rest = [a for a in items if a.get("kind") not in ("figure", "audio")]
        if figs:
            out.append('<div class="figures">' + "".join(_artifact(a, adir, root, listed) for a in figs) + "</div>")
        if audio:
            out.append('<div class="audios">' + "".join(_artifact(a, adir, root, listed) for a in audio) + "</div>")
        out.extend(_artifact(a, adir, root, listed) for a in rest)
    out.append(grid)
    pubs = res.get("published", [])
    if pubs:
        out.append("<h4>Published vs ours</h4>")
        for a in pubs:
            f = _inside(adir, a.get("path", ""))
            if f is None:
                out.append(f'<p class="missing">Missing file: {esc(a.get("path"))}</p>')
                continue
            out.append(published_html(f, str(f.relative_to(root.resolve())) if f.is_relative_to(root.resolve())
                                      else str((adir / a["path"]).relative_to(root)), a.get("caption", ""), root=root))
    return "".join(out)


def scrub_text_lines(text: str, root: Path) -> str:
    return "\n".join(scrub_text(line, root) for line in str(text).splitlines())


def summary_html(text: str) -> str:
    """A summary as the reader scans it: one finding per line as a list; prose paragraphs stay
    paragraphs. Analyses write findings as separate lines (or sentences ending in '.')."""
    paras = [p.strip() for p in text.split("\n\n") if p.strip()]
    out = []
    for p in paras:
        lines = [l.strip() for l in p.split("\n") if l.strip()]
        if len(lines) == 1:
            lines = _sentences_by_subject(lines[0])
        if len(lines) > 1:
            out.append('<ul class="summary">' + "".join(f"<li>{esc(l)}</li>" for l in lines) + "</ul>")
        else:
            out.append(f'<p class="summary">{esc(lines[0])}</p>')
    return "".join(out)


def _sentences_by_subject(text: str) -> list[str]:
    """Split a run-on summary ("a: x. b: y. c: z.") into one line per subject; other prose stays whole."""
    parts = [p.strip() for p in re.split(r"(?<=\.)\s+(?=[^.:]{1,80}: )", text) if p.strip()]
    return parts if len(parts) > 1 else [text]


ATTRIBUTE_ORDER = ("phone", "units", "speaker", "speaker_open", "f0", "f0_st", "voiced", "loudness", "accent")


def _findings_section(run: dict[str, Any], root: Path) -> str:
    """Layers x attributes per codec, side by side, each cell the best-supported measure."""
    from . import findings as fnd

    found = fnd.collect(run, root)
    if not found:
        return ""
    with atomic_path(root / "findings.csv", ".csv") as tmp:
        fnd.findings_table(found).to_csv(tmp, index=False)
    ctrl = fnd.control_names(run)
    codecs = fnd.codec_order(run, found)
    cells = fnd.best_cells(found)
    seen = list(dict.fromkeys(f.attribute for f in found))
    attrs = [a for a in ATTRIBUTE_ORDER if a in seen] + [a for a in seen if a not in ATTRIBUTE_ORDER]
    out = ['<p class="lead">Each cell: the best-supported measure that layer <i>k</i> carries the attribute '
           "(a probe score with its 95% interval, else a bias-corrected PNMI, else MI), shaded by how far it "
           "rises from its baseline (chance, or the shuffled-label null) toward its ceiling; grey: not above "
           "baseline. Hover a cell for every measure behind it. "
           f'All values: <a href="findings.csv">findings.csv</a>.</p><div class="lenses">']
    for codec in codecs:
        mine = [a for a in attrs if any(k[0] == codec and k[2] == a for k in cells)]
        layers = sorted({k[1] for k in cells if k[0] == codec})
        spec = next((f.spec for f in found if f.codec == codec and f.spec), "")
        control = fnd.is_control(spec, codec, ctrl)
        head = esc(codec) + (' <span class="badge">control: random weights</span>' if control else "")
        rows = ["<tr><th scope=\"col\">layer</th>" + "".join(f'<th scope="col">{esc(a)}</th>' for a in mine) + "</tr>"]
        for k in layers:
            tds = []
            for a in mine:
                fs = cells.get((codec, k, a))
                if not fs:
                    tds.append("<td></td>")
                    continue
                f = fs[0]
                tip = "; ".join(f"{g.measure} {fnd.fmt_value(g)} (baseline {fnd.fmt(g.baseline, g)}, {g.source})" for g in fs)
                shade = f"background:rgba(31,94,168,{0.12 + 0.7 * f.strength:.2f})" if f.above else "background:#eeeeee"
                fg = "color:#fff" if f.above and f.strength > 0.55 else ""
                tds.append(f'<td class="f" style="{shade};{fg}" title="{esc(tip)}" data-finding="{esc(codec)}|{k}|{esc(a)}|'
                           f'{esc(f.measure)}" data-value="{esc(repr(float(f.value)))}">{esc(fnd.fmt_value(f))}'
                           f'<span class="m">{esc(f.measure)}</span></td>')
            rows.append(f'<tr><th scope="row">{k}</th>' + "".join(tds) + "</tr>")
        out.append(f'<div class="lens{" control" if control else ""}"><h3>{head}</h3>'
                   f'<table class="findings">{"".join(rows)}</table></div>')
    out.append("</div><h3>Findings</h3><ul class=\"headlines\">")
    for text, src in fnd.headlines(found, codecs, ctrl):
        out.append(f'<li>{esc(text)} <a href="#{esc(_anchor(src))}">evidence</a></li>')
    out.append("</ul>")
    return "".join(out)


def _anchor(text: str) -> str:
    return "s-" + "".join(ch if ch.isalnum() else "-" for ch in text)


def _overview(run: dict[str, Any], root: Path) -> str:
    study = run["study"]
    steps = {s["id"]: s for s in run["steps"]}
    out = []
    rows = []
    for c in study["corpora"]:
        p = root / "corpora" / f"{c['name']}.summary.json"
        info = json.loads(p.read_text()) if p.is_file() else {}
        acc = info.get("accents") or {}
        rows.append({"corpus": c["name"], "spec": c["spec"], "utterances": info.get("utterances"),
                     "speakers": info.get("speakers"),
                     "accents": ", ".join(f"{k} ({v})" for k, v in acc.items()) if acc else "",
                     "skipped": info.get("n_problems")})
    out.append("<h3>Corpora</h3>" + table_html(pd.DataFrame(rows), root=root, reorder=False))
    rows = []
    for k in study["codecs"]:
        rows.append({"codec": k["name"], "label": k.get("label") or k["name"], "spec": k["spec"],
                     "control": "random weights" if k.get("control") else "",
                     "fitted on": (k.get("fit") or {}).get("corpus", "")})
    out.append("<h3>Codecs</h3>" + table_html(pd.DataFrame(rows), root=root, reorder=False))
    rows = []
    for s in run["steps"]:
        if s["kind"] != "extract":
            continue
        mf = root / s["out"] / "manifest.json"
        m = json.loads(mf.read_text()) if mf.is_file() else {}
        codec = m.get("codec", {})
        info = s.get("info") or {}
        rows.append({"store": s["id"].split(":", 1)[1], "status": s["status"],
                     "utterances": m.get("n_utterances"), "frames": m.get("n_frames"),
                     "hours": (m.get("seconds") or 0) / 3600 if m else None,
                     "layers": codec.get("n_layers"), "frame rate (Hz)": codec.get("frame_rate"),
                     "codebook sizes": _sizes(codec.get("codebook_sizes")), "skipped": len(m.get("skipped", []) or []),
                     "disk (MB)": info.get("disk_mb")})
    if rows:
        out.append("<h3>Feature stores</h3>" + table_html(pd.DataFrame(rows), root=root, reorder=False))
    bad = [s for s in run["steps"] if s["status"] == "failed" or s["this_run"] == "blocked"]
    if bad:
        out.append('<div class="failed"><h3>Steps that did not finish</h3><ul>' + "".join(
            f"<li>{esc(s['id'])}: {esc(scrub_text(s.get('error') or s['this_run'], root))}</li>" for s in bad) + "</ul></div>")
    return "".join(out)


def _sizes(sizes: Any) -> str:
    if not sizes:
        return ""
    return str(sizes[0]) if len(set(sizes)) == 1 else ",".join(map(str, sizes))


def _provenance(run: dict[str, Any], root: Path) -> str:
    prov = run.get("provenance", {})
    out = ['<h3>Run</h3><table class="kv">']
    for k, v in (("study file", scrub_text(str(run["study"]["path"]), root)), ("started", run.get("started")),
                 ("finished", run.get("finished")), ("wall time", f"{run.get('seconds', 0):.1f} s"),
                 ("git revision", prov.get("git") or "unknown")):
        out.append(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>")
    out.append("</table>")
    hw = prov.get("hardware", {})
    out.append("<h3>Hardware</h3>" + table_html(pd.DataFrame([{"key": k, "value": v} for k, v in hw.items()]), reorder=False))
    vers = prov.get("versions", {})
    out.append("<h3>Package versions</h3>" + table_html(pd.DataFrame([{"package": k, "version": v} for k, v in vers.items()]), reorder=False))
    rows = [{"step": s["id"], "kind": s["kind"], "this run": s["this_run"], "status": s["status"],
             "seconds": s.get("seconds"), "finished": s.get("finished"), "key": s.get("key"),
             "error": s.get("error") or ""} for s in run["steps"]]
    out.append("<h3>Steps and durations</h3>" + table_html(pd.DataFrame(rows), root=root, reorder=False))
    out.append('<h3>Study file</h3><p><a href="study.toml">study.toml</a></p>'
               f'<pre class="study">{esc(scrub_text_lines(run.get("study_text", ""), root))}</pre>')
    return "".join(out)


def _published_section(run: dict[str, Any], root: Path) -> str:
    pubs = run.get("published") or []
    if not pubs:
        return ""
    out = []
    dest = root / "published"
    for i, p in enumerate(pubs):
        src = Path(p["path"])
        if not src.is_file():
            out.append(f'<p class="missing">Missing published table: {esc(src)}</p>')
            continue
        copy = dest / f"{i:02d}-{src.name}"
        with atomic_path(copy, copy.suffix) as tmp:
            shutil.copyfile(src, tmp)
        out.append(published_html(copy, str(copy.relative_to(root)), p.get("caption", ""), p.get("source", ""), root))
    return "".join(out)


# -- page ---------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;background:#fbfbfa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:24px}
header p{margin:6px 0 0;opacity:.9}main{padding:8px 28px 60px;max-width:1300px}
nav{padding:10px 28px;background:#eef2f6;border-bottom:1px solid #d5dde6;font-size:14px}
nav a{margin-right:14px;color:#1f3a5f}h2{border-bottom:2px solid #1f3a5f;padding-bottom:4px;margin-top:38px}
h3{margin-top:26px}h4{margin:18px 0 6px;color:#445}
.figures{display:flex;flex-direction:column;gap:18px}figure{margin:0;max-width:1240px;background:#fff;
border:1px solid #dde;padding:8px;border-radius:6px}figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:13px;color:#333;margin-top:6px}.file{color:#778;font-size:12px}
.tablewrap{overflow:auto;max-height:520px;border:1px solid #dde;border-radius:4px;background:#fff;margin:4px 0 14px}
table{border-collapse:collapse;font-size:13px}th,td{padding:3px 9px;border-bottom:1px solid #eceff3;text-align:left;
white-space:nowrap}td[data-v]{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;position:sticky;top:0;background:#eef2f6;user-select:none}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
table.kv th{text-align:left;background:#eef2f6}caption{caption-side:top;text-align:left;font-weight:600}
.audios{display:flex;flex-wrap:wrap;gap:10px 22px}.audio{display:flex;flex-direction:column;font-size:13px}
.cap{margin:10px 0 2px}.meta{color:#667;font-size:13px}.missing{color:#a33}.note{color:#667;font-size:12px}
blockquote.source{margin:4px 0 8px;padding:4px 12px;border-left:4px solid #c9a227;background:#fffbea;font-size:13px}
.failed{background:#fdeeee;border:1px solid #e4b4b4;padding:4px 14px;border-radius:6px}
pre.study{background:#f3f4f6;padding:12px;overflow:auto;font-size:12px;border-radius:4px}
.summary{max-width:900px;white-space:pre-line}ul.summary{white-space:normal;padding-left:22px}
ul.summary li{margin:2px 0}.lenses{display:flex;flex-wrap:wrap;gap:16px}
.lens{background:#fff;border:1px solid #cdd6e0;border-radius:6px;padding:4px 10px 10px}
.lens.control{border:2px dashed #b08a2a;background:#fffdf5}.lens h3{margin:6px 0;font-size:15px}
.badge{font-size:11px;font-weight:600;color:#7a5b00;background:#fbeec3;border-radius:3px;padding:1px 5px}
table.findings td.f{text-align:center;font-variant-numeric:tabular-nums;min-width:110px}
table.findings td .m{display:block;font-size:10px;opacity:.75}table.findings th{background:#eef2f6}
ul.headlines li{margin:3px 0}table.listen audio{width:190px;height:32px}table.listen td{padding:2px 4px}.lead{max-width:1000px;color:#334}.tools{display:flex;gap:12px;align-items:center;font-size:13px;margin:4px 0}
.tools input.filter{padding:2px 6px;border:1px solid #bcc;border-radius:4px;font-size:13px}
.tools button{font-size:12px;padding:2px 8px;border:1px solid #bcc;border-radius:4px;background:#fff;cursor:pointer}
"""

JS = r"""
(function(){
  function key(td){
    var v = td.getAttribute('data-v');
    if (v !== null && v !== '' && !isNaN(Number(v))) { return {n: true, v: Number(v)}; }
    return {n: false, v: td.textContent};
  }
  function cmp(a, b){
    if (a.n && b.n) { return a.v - b.v; }
    if (a.n !== b.n) { return a.n ? -1 : 1; }
    return a.v.localeCompare(b.v, undefined, {numeric: true});
  }
  function rowsOf(box){ return Array.prototype.slice.call(box.querySelectorAll('tbody tr')); }
  function refresh(box){
    var input = box.querySelector('input.filter');
    var q = input ? input.value.trim().toLowerCase() : '';
    var all = box.getAttribute('data-all') === '1';
    rowsOf(box).forEach(function(r){
      if (q) { r.hidden = r.textContent.toLowerCase().indexOf(q) < 0; }
      else { r.hidden = r.classList.contains('more') && !all; }
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll('div.tbl'), function(box){
    var input = box.querySelector('input.filter');
    if (input) { input.addEventListener('input', function(){ refresh(box); }); }
    var btn = box.querySelector('button.showall');
    if (btn) {
      var label = btn.textContent;
      btn.addEventListener('click', function(){
        var all = box.getAttribute('data-all') !== '1';
        box.setAttribute('data-all', all ? '1' : '0');
        btn.textContent = all ? 'show first rows' : label;
        refresh(box);
      });
    }
  });
  var heads = document.querySelectorAll('table.sortable thead th');
  Array.prototype.forEach.call(heads, function(th){
    th.addEventListener('click', function(){
      var table = th.closest('table');
      var body = table.tBodies[0];
      var idx = Array.prototype.indexOf.call(th.parentNode.children, th);
      var asc = th.getAttribute('aria-sort') !== 'ascending';
      Array.prototype.forEach.call(th.parentNode.children, function(h){ h.removeAttribute('aria-sort'); });
      th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function(r1, r2){
        var c = cmp(key(r1.cells[idx]), key(r2.cells[idx]));
        return asc ? c : -c;
      });
      rows.forEach(function(r){ body.appendChild(r); });
      var box = table.closest('div.tbl');
      if (box) {
        var k = Number(box.getAttribute('data-preview') || rows.length);
        rows.forEach(function(r, i){ r.classList.toggle('more', i >= k); });
        refresh(box);
      }
    });
  });
})();
"""


def render(run: dict[str, Any], root: Path) -> str:
    """The report page of a run directory (``run.json`` already loaded)."""
    title = study_title(run, root)
    sections: list[tuple[str, str, str]] = []
    lens = _findings_section(run, root)
    if lens:
        sections.append(("findings", "What each layer encodes", lens))
    sections.append(("overview", "Overview", _overview(run, root)))
    by_entry: dict[str, list[dict]] = {}
    for s in run["steps"]:
        if s["kind"] == "analysis":
            by_entry.setdefault(s["group"], []).append(s)
    kinds = {a["name"]: a for a in run["study"]["analyses"]}
    for name, steps in by_entry.items():
        body = "".join(_result_html(s, root) for s in steps)
        a = kinds.get(name, {})
        title_a = _analysis_title(steps, root) or name
        label = f"{title_a}" + (f" ({name})" if a.get("kind") and a.get("kind") != name else "")
        sections.append((_anchor(name), label, body))
    pub = _published_section(run, root)
    if pub:
        sections.append(("published", "Published references", pub))
    sections.append(("provenance", "Provenance", _provenance(run, root)))
    nav = "".join(f'<a href="#{esc(a)}">{esc(t)}</a>' for a, t, _ in sections)
    body = "".join(f'<section id="{esc(a)}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    desc = run.get("description") or ""
    st = run["steps"]
    done = sum(1 for s in st if s["status"] == "done")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)} · codeclens report</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1>{f'<p>{esc(desc)}</p>' if desc else ''}"
        f"<p>{done}/{len(st)} steps done · wall time of this run {run.get('seconds', 0):.1f} s · "
        f"finished {esc(run.get('finished'))}</p></header>"
        f"<nav>{nav}</nav><main>{body}</main><script>{JS}</script></body></html>\n"
    )


def study_title(run: dict[str, Any], root: Path) -> str:
    """The study's title with ``{corpora}`` filled in from the corpora it actually ran on, so a
    study pointed at another corpus never claims the one its file was written for."""
    title = run.get("title") or "codeclens study"
    if "{corpora}" in title:
        names = []
        for c in run["study"]["corpora"]:
            spec = scrub_text(str(c.get("spec", "")), root)
            kind, _, target = spec.partition(":")
            target = target.split("?", 1)[0].rstrip("/")
            names.append(f"{kind} {Path(target).name}".strip() if target else spec.split("?", 1)[0])
        title = title.replace("{corpora}", ", ".join(names) or "no corpus")
    return title


def _analysis_title(steps: Iterable[dict], root: Path) -> str:
    for s in steps:
        r = root / s["out"] / "result.json"
        if r.is_file():
            try:
                return json.loads(r.read_text()).get("title", "")
            except json.JSONDecodeError:
                pass
    return ""


def write_report(root: str | Path) -> Path:
    """Write ``report.html`` for the run directory ``root``; returns its path."""
    root = Path(root)
    run = json.loads((root / "run.json").read_text())
    page = render(run, root)
    out = root / REPORT
    write_text(out, page)
    out.chmod(0o644)  # a temporary file's private mode would stop a web server from serving it
    return out
