"""``codeclens ablate``: layer interventions on a store's codec, measured on decoded audio."""

from __future__ import annotations

from pathlib import Path

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.ablate.run import AblateConfig

    p = sub.add_parser(
        "ablate",
        help="drop / truncate / swap / noise RVQ layers, decode, and measure speaker, pitch and content change",
        description=(
            "Edit a codec's token streams layer by layer, decode, and measure what changed against the "
            "unedited decode. Example: codeclens ablate --store runs/store --interventions drop,truncate,swap:2-8 "
            "--layers 1-8 --n-utts 20 --out runs/ablate. Re-running the same command resumes."
        ),
    )
    p.add_argument("--store", required=True, action="append", help="feature store directory (repeat for several codecs)")
    p.add_argument("--out", required=True, help="output directory")
    add_dataclass_args(p, AblateConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_ablate)


def run_ablate(args) -> int:
    from ..analyses.ablate.run import AblateAnalysis, AblateConfig
    from ..store import open_stores

    cfg = from_args(AblateConfig, args)
    stores = open_stores(args.store)
    res = AblateAnalysis()(stores, cfg, Path(args.out), progress=not args.quiet)
    print(f"{args.out}: {len(res.artifacts)} artifacts in {res.seconds:.1f} s")
    if res.summary:
        print(res.summary)
    return 0
