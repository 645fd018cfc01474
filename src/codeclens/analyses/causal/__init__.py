"""Causal analysis of RVQ layers: Shapley attribution over layer masks, interchange
interventions, and token patching of downstream consumers (``codeclens causal``)."""

from .run import CausalAnalysis, CausalConfig

__all__ = ["CausalAnalysis", "CausalConfig"]
