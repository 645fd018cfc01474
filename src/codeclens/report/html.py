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
import shutil
from pathlib import Path
from typing import Any, Iterable
from urllib.parse import quote

import pandas as pd

from ..util.atomic import atomic_path, write_text

REPORT = "report.html"
MAX_ROWS = 400
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


def _cell(v: Any) -> tuple[str, str]:
    """(display text, sort key) of one value."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "", ""
    if isinstance(v, bool):
        return str(v), str(int(v))
    if isinstance(v, (int,)) or (hasattr(v, "dtype") and getattr(v, "dtype").kind in "iu"):
        return str(v), str(v)
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v, "dtype").kind == "f"):
        f = float(v)
        if math.isinf(f):
            return str(f), ""
        text = f"{f:.4g}" if abs(f) < 1e6 else f"{f:.3e}"
        return text, repr(f)
    return str(v), ""


def table_html(df: pd.DataFrame, max_rows: int = MAX_ROWS, caption: str = "") -> str:
    """A sortable table (click a header); all cells escaped."""
    parts = ['<div class="tablewrap"><table class="sortable">']
    if caption:
        parts.append(f"<caption>{esc(caption)}</caption>")
    parts.append("<thead><tr>" + "".join(f'<th scope="col" title="sort">{esc(c)}</th>' for c in df.columns) + "</tr></thead>")
    parts.append("<tbody>")
    for row in df.head(max_rows).itertuples(index=False, name=None):
        cells = []
        for v in row:
            text, key = _cell(v)
            attr = f' data-v="{esc(key)}"' if key else ""
            cells.append(f"<td{attr}>{esc(text)}</td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</tbody></table></div>")
    if len(df) > max_rows:
        parts.append(f'<p class="note">First {max_rows} of {len(df)} rows shown.</p>')
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
        return f'<p class="page">&#128279; <a href="{href(rel)}">{esc(cap or Path(path).name)}</a></p>'
    if f.suffix.lower() in _TABLE_EXT:
        try:
            df = read_table(f)
        except Exception as e:  # a broken table must not break the report
            return f'<p class="missing">Could not read {esc(path)}: {esc(e)}</p>'
        return (f'<div class="table"><p class="cap">{esc(cap)} <span class="file">({link})</span></p>'
                f"{table_html(df)}</div>")
    return f'<p class="file">{esc(cap)} ({link})</p>'


def published_html(path: Path, rel: str, caption: str = "", source: str = "") -> str:
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
            f"{esc(Path(rel).name)}</a>)</span></p>{quote_html}{table_html(df)}</div>")


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
        out.extend(f"<p class=\"summary\">{esc(p)}</p>" for p in str(res["summary"]).split("\n\n") if p.strip())
    arts = res.get("artifacts", [])
    listed = {a.get("path", "") for a in arts}
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
    pubs = res.get("published", [])
    if pubs:
        out.append("<h4>Published vs ours</h4>")
        for a in pubs:
            f = _inside(adir, a.get("path", ""))
            if f is None:
                out.append(f'<p class="missing">Missing file: {esc(a.get("path"))}</p>')
                continue
            out.append(published_html(f, str(f.relative_to(root.resolve())) if f.is_relative_to(root.resolve())
                                      else str((adir / a["path"]).relative_to(root)), a.get("caption", "")))
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
    out.append("<h3>Corpora</h3>" + table_html(pd.DataFrame(rows)))
    rows = []
    for k in study["codecs"]:
        rows.append({"codec": k["name"], "label": k.get("label") or k["name"], "spec": k["spec"],
                     "control": "random weights" if k.get("control") else "",
                     "fitted on": (k.get("fit") or {}).get("corpus", "")})
    out.append("<h3>Codecs</h3>" + table_html(pd.DataFrame(rows)))
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
        out.append("<h3>Feature stores</h3>" + table_html(pd.DataFrame(rows)))
    bad = [s for s in run["steps"] if s["status"] == "failed" or s["this_run"] == "blocked"]
    if bad:
        out.append('<div class="failed"><h3>Steps that did not finish</h3><ul>' + "".join(
            f"<li>{esc(s['id'])}: {esc(s.get('error') or s['this_run'])}</li>" for s in bad) + "</ul></div>")
    return "".join(out)


def _sizes(sizes: Any) -> str:
    if not sizes:
        return ""
    return str(sizes[0]) if len(set(sizes)) == 1 else ",".join(map(str, sizes))


def _provenance(run: dict[str, Any], root: Path) -> str:
    prov = run.get("provenance", {})
    out = ['<h3>Run</h3><table class="kv">']
    for k, v in (("study file", run["study"]["path"]), ("started", run.get("started")),
                 ("finished", run.get("finished")), ("wall time", f"{run.get('seconds', 0):.1f} s"),
                 ("git revision", prov.get("git") or "unknown")):
        out.append(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>")
    out.append("</table>")
    hw = prov.get("hardware", {})
    out.append("<h3>Hardware</h3>" + table_html(pd.DataFrame([{"key": k, "value": v} for k, v in hw.items()])))
    vers = prov.get("versions", {})
    out.append("<h3>Package versions</h3>" + table_html(pd.DataFrame([{"package": k, "version": v} for k, v in vers.items()])))
    rows = [{"step": s["id"], "kind": s["kind"], "this run": s["this_run"], "status": s["status"],
             "seconds": s.get("seconds"), "finished": s.get("finished"), "key": s.get("key"),
             "error": s.get("error") or ""} for s in run["steps"]]
    out.append("<h3>Steps and durations</h3>" + table_html(pd.DataFrame(rows)))
    out.append('<h3>Study file</h3><p><a href="study.toml">study.toml</a></p>'
               f'<pre class="study">{esc(run.get("study_text", ""))}</pre>')
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
        out.append(published_html(copy, str(copy.relative_to(root)), p.get("caption", ""), p.get("source", "")))
    return "".join(out)


# -- page ---------------------------------------------------------------------

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d232a;background:#fbfbfa}
header{background:#1f3a5f;color:#fff;padding:18px 28px}header h1{margin:0;font-size:24px}
header p{margin:6px 0 0;opacity:.9}main{padding:8px 28px 60px;max-width:1300px}
nav{padding:10px 28px;background:#eef2f6;border-bottom:1px solid #d5dde6;font-size:14px}
nav a{margin-right:14px;color:#1f3a5f}h2{border-bottom:2px solid #1f3a5f;padding-bottom:4px;margin-top:38px}
h3{margin-top:26px}h4{margin:18px 0 6px;color:#445}
.figures{display:flex;flex-wrap:wrap;gap:18px}figure{margin:0;max-width:620px;background:#fff;
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
.summary{max-width:900px;white-space:pre-line}
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
    });
  });
})();
"""


def render(run: dict[str, Any], root: Path) -> str:
    """The report page of a run directory (``run.json`` already loaded)."""
    title = run.get("title") or "codeclens study"
    sections: list[tuple[str, str, str]] = [("overview", "Overview", _overview(run, root))]
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
