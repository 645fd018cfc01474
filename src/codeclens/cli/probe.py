"""``codeclens probe``: linear probes per RVQ layer on one or more feature stores."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.probes.config import ProbeConfig

    p = sub.add_parser(
        "probe", help="linear probes per RVQ layer (phone, speaker, f0, accent, ...) with controls",
        description="Fit linear probes for each task on each representation of each store; writes probes.csv, "
        "figures and result.json under --out.",
    )
    p.add_argument("--store", action="append", required=True, metavar="DIR", help="feature store (repeatable)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_dataclass_args(p, ProbeConfig)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_probe)


def run_probe(args) -> int:
    from ..analyses import ANALYSES
    from ..analyses.probes import ProbeConfig, open_store_list

    cfg = from_args(ProbeConfig, args)
    stores = open_store_list(args.store)
    res = ANALYSES.get("probes")()(stores, cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"wrote {args.out}/probes.csv and figures ({res.seconds:.1f} s)")
    return 0
