"""``codeclens figures RUN``: redraw a run's figures (PDF/SVG/PNG, another style) from its tables."""

from __future__ import annotations

from pathlib import Path

FORMATS = ("png", "svg", "pdf")


def add_parser(sub) -> None:
    p = sub.add_parser("figures", help="re-render a study run's figures from its result tables, without recomputing")
    p.add_argument("run", metavar="RUN", help="study run directory (with run.json)")
    p.add_argument("--format", action="append", choices=FORMATS, metavar="FMT",
                   help="png | svg | pdf (repeat; default: all three; PNG is always written for the report)")
    p.add_argument("--style", metavar="FILE",
                   help="a matplotlib style file (default: codeclens' own, data/styles/codeclens.mplstyle)")
    p.set_defaults(func=run_figures)


def run_figures(args) -> int:
    from ..report.html import write_report
    from ..report.rerender import rerender

    run = Path(args.run)
    written, skipped = rerender(run, tuple(args.format or FORMATS), args.style)
    if skipped:
        print("kept as they were (no re-renderer for this analysis yet): " + ", ".join(skipped))
    print(f"{len(written)} figure files written")
    write_report(run)
    return 0
