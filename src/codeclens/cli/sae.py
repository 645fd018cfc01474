"""``codeclens sae``: TopK SAE sweep, ΔF1 (z / position / magnitude), density, feature browsers."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def add_parser(sub) -> None:
    from ..analyses.sae import SAEStudyConfig

    p = sub.add_parser(
        "sae",
        help="sparse autoencoders on codec representations (Wang et al. 2026: ΔF1, position vs magnitude)",
        description="Train a q x s sweep of TopK SAEs concurrently per store, classify the label from z, "
        "z_pos and z_mag, and write result.json, tables, figures and HTML feature browsers under --out.",
    )
    p.add_argument("stores", nargs="+", help="feature store directories (several: one line per store)")
    p.add_argument("--out", required=True, help="output directory of the analysis")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(p, SAEStudyConfig)
    p.set_defaults(func=run)

    from ..analyses.sae import LatentProbeConfig

    lp = sub.add_parser(
        "sae-latents",
        help="frame-level SAEs per layer; which latents are monosemantic for phone, speaker, F0",
        description="Train one frame-level TopK SAE per representation and score every latent against "
        "categorical (purity) and continuous (Spearman rho) attributes on held-out speakers.",
    )
    lp.add_argument("stores", nargs="+", help="feature store directories")
    lp.add_argument("--out", required=True, help="output directory of the analysis")
    lp.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(lp, LatentProbeConfig)
    lp.set_defaults(func=run_latents)


def run(args) -> int:
    from ..analyses.sae import SAEAnalysis, SAEStudyConfig
    from ..store.reader import open_stores

    cfg = from_args(SAEStudyConfig, args)
    stores = open_stores(args.stores)
    res = SAEAnalysis()(stores, cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"sae: {len(res.artifacts)} artifacts, {len(res.published)} published-vs-ours tables in {args.out} "
          f"({res.seconds:.1f} s)")
    return 0


def run_latents(args) -> int:
    from ..analyses.sae import LatentProbeAnalysis, LatentProbeConfig
    from ..store.reader import open_stores

    cfg = from_args(LatentProbeConfig, args)
    res = LatentProbeAnalysis()(open_stores(args.stores), cfg, args.out, progress=not args.quiet)
    print(res.summary)
    print(f"sae-latents: {len(res.artifacts)} artifacts in {args.out} ({res.seconds:.1f} s)")
    return 0
