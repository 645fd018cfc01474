"""``codeclens run STUDY.toml``: corpora x codecs x analyses, resumably, then one HTML report."""

from __future__ import annotations

from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a study file (corpora x codecs x analyses) and write its HTML report")
    p.add_argument("study", help="study file (TOML); see docs/study.md")
    p.add_argument("--out", default=None, help="run directory (default: runs/<study name>)")
    p.add_argument("--force", action="append", default=[], metavar="STEP",
                   help="re-run this step even if it is up to date: a step id (extract:synth/dac), "
                        "a kind (corpus, fit, random, extract), or a study entry name (probes); repeatable")
    p.add_argument("--check", action="store_true", help="only validate the study file, list its steps and estimate the run time")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_cmd)


def run_cmd(args) -> int:
    from ..study import load_study

    study = load_study(args.study)
    out = Path(args.out) if args.out else Path("runs") / study.meta.name
    return execute(study, out, args.force, not args.quiet, check=args.check)


def execute(study, out: Path, force=(), progress: bool = True, check: bool = False) -> int:
    from ..errors import CodeclensError
    from ..study import Runner

    runner = Runner(study, out, force=force, progress=progress)
    if check:
        for s in runner.steps:
            deps = f"  <- {', '.join(s.deps)}" if s.deps else ""
            print(f"{s.id}{deps}")
        print(f"{study.path}: ok, {len(runner.steps)} steps")
        from ..study.estimate import describe, estimate

        print(describe(estimate(study)))
        return 0
    res = runner.run()
    print(f"report: {res.report}")
    if not res.ok:
        raise CodeclensError(
            f"{len(res.failed)} step(s) failed ({', '.join(res.failed)}), {len(res.blocked)} not run; "
            f"see {out / 'run.log'}; finished steps are kept, re-run to resume"
        )
    return 0
