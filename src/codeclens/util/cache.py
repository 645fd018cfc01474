"""The user's codeclens cache folder (synthetic corpora, fingerprint memos): never inside a store."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """``$CODECLENS_CACHE``, else ``$XDG_CACHE_HOME/codeclens``, else ``~/.cache/codeclens``."""
    if os.environ.get("CODECLENS_CACHE"):
        return Path(os.environ["CODECLENS_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "codeclens"
