"""``codeclens causal``: Shapley attribution of RVQ layers, interchange, token-consumer patching."""

from __future__ import annotations

from .tokens import add_store_analysis_parser, run_store_analysis


def add_parser(sub) -> None:
    from ..analyses.causal import CausalConfig

    p = add_store_analysis_parser(
        sub, "causal",
        "which RVQ layers cause which property: Shapley values over layer masks (decoder measures and "
        "token consumers), interchange from a donor, drop/mean/swap patching of token classifiers and a token LM",
        CausalConfig, _run)
    p.description = ("Example: codeclens causal --store stores/encodec6 --consumers speaker,phone,lm --n-utts 8 "
                     "--out runs/causal. Layer k's tokens are patched and the effect measured on the decoded audio "
                     "(Shapley values over all 2^L layer masks) and on models that read the tokens.")


def _run(args) -> int:
    from ..analyses.causal import CausalAnalysis, CausalConfig

    return run_store_analysis(CausalAnalysis(), CausalConfig, args)
