"""``codeclens tokens``: code <-> label association and codebook usage per RVQ layer.

Also holds the two helpers the other one-analysis-over-stores commands (``mi``,
``tsne``) build on, so their options and output lines stay alike.
"""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_store_analysis_parser(sub, name: str, help: str, config_cls, run, multi: bool = True):
    """A subcommand ``name --store DIR [--store DIR...] --out DIR [config options] [--quiet]``."""
    p = sub.add_parser(name, help=help)
    if multi:
        p.add_argument("--store", action="append", required=True, metavar="DIR",
                       help="feature store directory (repeat for one panel per store, e.g. to compare codecs)")
    else:
        p.add_argument("--store", required=True, metavar="DIR", help="feature store directory")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_dataclass_args(p, config_cls)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run_store_analysis(analysis, config_cls, args) -> int:
    """Build the config (bad options fail before any store is opened), run, print the summary."""
    from ..store.reader import open_stores

    cfg = from_args(config_cls, args)
    paths = args.store if isinstance(args.store, list) else [args.store]
    res = analysis(open_stores(paths), cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"{analysis.name}: {len(res.artifacts)} artifacts written to {args.out}")
    return 0


def add_parser(sub) -> None:
    from ..analyses.tokens import TokensConfig

    add_store_analysis_parser(
        sub, "tokens", "co-occurrence of each layer's codes with units/phones/speakers (Sadok et al. 2025 §2.1)",
        TokensConfig, run,
    )


def run(args) -> int:
    from ..analyses.tokens import TokensAnalysis, TokensConfig

    return run_store_analysis(TokensAnalysis(), TokensConfig, args)
