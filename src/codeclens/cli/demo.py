"""``codeclens demo``: the bundled demo study, offline, end to end."""

from __future__ import annotations

from pathlib import Path


def demo_study_path() -> Path:
    """The demo study file shipped inside the package."""
    from importlib import resources

    return Path(str(resources.files("codeclens") / "studies" / "demo.toml"))


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="run the bundled demo study (synthetic speech, melrvq, random-weight codecs)")
    p.add_argument("--out", default="runs/demo", help="run directory (default: runs/demo)")
    p.add_argument("--force", action="append", default=[], metavar="STEP", help="re-run this step (see 'run --help')")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)


def run_demo(args) -> int:
    from ..study import load_study
    from .run import execute

    study = load_study(demo_study_path())
    return execute(study, Path(args.out), args.force, not args.quiet)
