"""The feature store: codes, not vectors (see DESIGN.md)."""

from .reader import Store, open_stores
from .reprs import Repr, parse_reprs

__all__ = ["Store", "open_stores", "Repr", "parse_reprs"]
