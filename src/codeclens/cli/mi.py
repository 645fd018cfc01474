"""``codeclens mi``: mutual information between RVQ layers and speech attributes."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.mi import MIConfig

    p = sub.add_parser(
        "mi", help="per-layer MI with phone/speaker/F0: plug-in (Miller-Madow) and a CLUB bracket (Sadok §2.4)"
    )
    p.add_argument("--store", action="append", required=True, metavar="DIR",
                   help="feature store directory (repeat to compare codecs)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_dataclass_args(p, MIConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..analyses.mi import MIAnalysis, MIConfig
    from ..store.reader import open_stores

    cfg = from_args(MIConfig, args)
    res = MIAnalysis()(open_stores(args.store), cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"mi: {len(res.artifacts)} artifacts written to {args.out}")
    return 0
