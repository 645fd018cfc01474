"""``ablate``: interventions on RVQ layers (drop, mean-ablate, truncate, only, swap, noise),
measured on the decoded audio. See docs/ablate.md.

Shared with sibling intervention analyses: :mod:`.engine` (decode-and-measure with a
content-keyed cache) and :mod:`codeclens.analyses.stats.paired` (paired statistics)."""

from .. import ANALYSES
from .interventions import (
    Edited, Intervention, align_time, apply, code_distributions, drop_layers, expected_vectors, format_layers,
    keep_first, keep_only, mean_layers, noise_layers, parse_interventions, parse_layers, swap_layers,
)
from .run import AblateAnalysis, AblateConfig, ablate, ablate_store, decode_codes, encode_audio

ANALYSES.register("ablate")(AblateAnalysis)

__all__ = [
    "AblateAnalysis", "AblateConfig", "Edited", "Intervention", "ablate", "ablate_store", "align_time", "apply",
    "code_distributions", "decode_codes", "drop_layers", "encode_audio", "expected_vectors", "format_layers",
    "keep_first", "keep_only", "mean_layers", "noise_layers", "parse_interventions", "parse_layers", "swap_layers",
]
