"""``codeclens table RUN``: the per-layer probe table a paper needs, as CSV, Markdown and LaTeX."""

from __future__ import annotations

from pathlib import Path

from ..errors import CodeclensError

FORMATS = ("csv", "md", "tex")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "table",
        help="export the per-layer table (codec x task x layer: score, interval, chance, control, published) "
             "of a study run or a probes result as CSV, Markdown and LaTeX",
    )
    p.add_argument("run", metavar="RUN", help="study run directory (with run.json) or a probes result directory")
    p.add_argument("--out", metavar="DIR", help="where to write paper_table.{csv,md,tex} (default: RUN/tables)")
    p.add_argument("--format", action="append", choices=FORMATS, metavar="FMT",
                   help="csv | md | tex (repeat; default: all three)")
    p.add_argument("--metric", help="probe metric to report (default: macro_f1 for classes, r2 for continuous targets)")
    p.set_defaults(func=run_table)


def run_table(args) -> int:
    from ..report.paper import paper_table, to_markdown, write_tables

    run = Path(args.run)
    if not run.is_dir():
        raise CodeclensError(f"{run}: no such run directory")
    df = paper_table(run, args.metric)
    if df.empty:
        raise CodeclensError(f"{run}: no per-layer probe rows" + (f" with metric '{args.metric}'" if args.metric else ""))
    out = Path(args.out) if args.out else run / "tables"
    if out.exists() and not out.is_dir():
        raise CodeclensError(f"{out} is a file; give another --out")
    paths = write_tables(df, out, tuple(args.format or FORMATS))
    print(to_markdown(df.head(12)), end="")
    if len(df) > 12:
        print(f"... {len(df) - 12} more rows")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
