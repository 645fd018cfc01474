"""``codeclens sae``: TopK SAE sweep, ΔF1 (z / position / magnitude), density, feature browsers."""

from __future__ import annotations

from ..config import add_dataclass_args, from_args


def _add(sub, name: str, help: str, description: str, config_cls, run) -> None:
    p = sub.add_parser(name, help=help, description=description)
    p.add_argument("stores", nargs="+", help="feature store directories (several: one line per store)")
    p.add_argument("--out", required=True, help="output directory of the analysis")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dataclass_args(p, config_cls)
    p.set_defaults(func=run)


def add_parser(sub) -> None:
    from ..analyses.sae import LatentProbeConfig, SAEStudyConfig

    _add(sub, "sae", "sparse autoencoders on codec representations (Wang et al. 2026: ΔF1, position vs magnitude)",
         "Train a q x s sweep of TopK SAEs concurrently per store, classify the label from z, "
         "z_pos and z_mag, and write result.json, tables, figures and HTML feature browsers under --out.",
         SAEStudyConfig, run)
    _add(sub, "sae-latents", "frame-level SAEs per layer; which latents are monosemantic for phone, speaker, F0",
         "Train one frame-level TopK SAE per representation and score every latent against "
         "categorical (purity) and continuous (Spearman rho) attributes on held-out speakers.",
         LatentProbeConfig, run_latents)


def _run(analysis, config_cls, args):
    from ..store.reader import open_stores

    cfg = from_args(config_cls, args)
    res = analysis(open_stores(args.stores), cfg, args.out, progress=not args.quiet)
    print(res.summary)
    return res


def run(args) -> int:
    from ..analyses.sae import SAEAnalysis, SAEStudyConfig

    res = _run(SAEAnalysis(), SAEStudyConfig, args)
    print(f"sae: {len(res.artifacts)} artifacts, {len(res.published)} published-vs-ours tables in {args.out} "
          f"({res.seconds:.1f} s)")
    return 0


def run_latents(args) -> int:
    from ..analyses.sae import LatentProbeAnalysis, LatentProbeConfig

    res = _run(LatentProbeAnalysis(), LatentProbeConfig, args)
    print(f"sae-latents: {len(res.artifacts)} artifacts in {args.out} ({res.seconds:.1f} s)")
    return 0
