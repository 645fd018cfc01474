"""A store's content fingerprint: the key every analysis cache is built on.

Caches keyed on a store's path or config survive ``codeclens label`` (which
rewrites labels) and re-extraction, and then serve stale results. The
fingerprint hashes the bytes of every content file instead. Hashing a large
``codes.npy`` on every open would be slow, so each file's digest is memoised,
keyed on (size, mtime_ns): a file that is rewritten gets a new mtime and is
hashed again. The memo lives in the user's cache folder (keyed by the store's
absolute path), never inside the store: reading a store must not change it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from . import layout

CONTENT_FILES = (layout.CODES, layout.TABLES, layout.UTTERANCES, layout.FRAMES, layout.LATENT)
"""Files whose bytes determine what an analysis reads (the manifest is hashed separately)."""
MEMO_DIR = "fingerprints"
_MANIFEST_VOLATILE = ("versions", "git", "hardware", "timing", "elapsed_s")
"""Manifest keys that record when/where a store was made, not what it holds."""


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def _memo_path(root: Path) -> Path:
    from ..util.cache import cache_root

    key = hashlib.blake2b(str(root.resolve()).encode(), digest_size=12).hexdigest()
    return cache_root() / MEMO_DIR / f"{key}.json"


def _load_memo(root: Path) -> dict:
    try:
        memo = json.loads(_memo_path(root).read_text())
        return memo if isinstance(memo, dict) else {}
    except (OSError, ValueError):
        return {}


def _save_memo(root: Path, memo: dict) -> None:
    # An unwritable cache only costs hashing again next time.
    path = _memo_path(root)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(memo, sort_keys=True))
        tmp.replace(path)
    except OSError:
        tmp.unlink(missing_ok=True)


def store_fingerprint(root: str | Path) -> str:
    """Hex digest of a store's content: codes, tables, labels, latent and manifest
    (less its timing fields). Equal fingerprints mean an analysis reads the same data."""
    root = Path(root)
    memo = _load_memo(root)
    changed = False
    parts: list[str] = []
    for name in CONTENT_FILES:
        p = root / name
        if not p.is_file():
            parts.append(f"{name}:-")
            continue
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns]
        entry = memo.get(name)
        if not (isinstance(entry, dict) and entry.get("stamp") == stamp and isinstance(entry.get("digest"), str)):
            entry = {"stamp": stamp, "digest": file_digest(p)}
            memo[name] = entry
            changed = True
        parts.append(f"{name}:{entry['digest']}")
    try:
        manifest = json.loads((root / layout.MANIFEST).read_text())
    except (OSError, ValueError):
        manifest = None
    if isinstance(manifest, dict):
        manifest = {k: v for k, v in manifest.items() if k not in _MANIFEST_VOLATILE}
    parts.append("manifest:" + hashlib.blake2b(json.dumps(manifest, sort_keys=True, default=str).encode(), digest_size=16).hexdigest())
    if changed:
        _save_memo(root, memo)
    return hashlib.blake2b("\n".join(parts).encode(), digest_size=16).hexdigest()
