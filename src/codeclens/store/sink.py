"""Where distributed workers commit shards: the store's own build folder, or a shared fsspec URL.

On a cluster whose nodes share a POSIX file system the workers write straight
into the store being built (:class:`LocalSink`: commit by directory rename). When
they do not (cloud nodes, object stores), they commit to a staging URL instead
(:class:`UrlSink`: ``s3://``, ``gs://``, ``file://``, any fsspec protocol) and the
driver fetches the committed shards into its build folder before finalising.

Object stores have no atomic directory rename, so a remote shard is committed
by a marker object written after every file of the shard
(``shard-0000i.committed``; a single PUT is atomic). A shard without its marker
is not there: a worker killed mid-upload leaves files that the retry overwrites
with the same bytes. Everything lives under the extraction's config hash, so two
configurations never mix, and the staging area is removed once the store is
complete.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from ..errors import CodeclensError
from ..util.atomic import atomic_dir

ENCODED = ".encoded"
"""Folder of encoded-but-unlabelled shards handed from codec to labelling workers."""
MARKER = ".committed"


class LocalSink:
    """Shards committed into the build folder itself (a path every worker sees)."""

    def __init__(self, store_dir: str | Path):
        self.store_dir = Path(store_dir)

    def _shard(self, i: int) -> Path:
        from .writer import shard_path

        return shard_path(self.store_dir, i)

    def _encoded(self, i: int) -> Path:
        p = self._shard(i)
        return p.parent / ENCODED / f"{p.name}.npz"

    def committed(self, i: int) -> bool:
        return self._shard(i).is_dir()

    def commit(self, i: int, write: Callable[[Path], float]) -> float:
        """``write(dest)`` commits the shard at ``dest`` itself (by rename: :func:`label_shard`)."""
        return write(self._shard(i))

    def has_encoded(self, i: int) -> bool:
        return self._encoded(i).is_file()

    def put_encoded(self, i: int, enc) -> None:
        from .writer import save_encoded

        save_encoded(enc, self._encoded(i))

    def get_encoded(self, i: int):
        from .writer import load_encoded

        return load_encoded(self._encoded(i))

    def drop_encoded(self, i: int) -> None:
        self._encoded(i).unlink(missing_ok=True)


class UrlSink:
    """Shards committed to a staging URL under ``<url>/<config hash>/``, fetched by the driver."""

    def __init__(self, url: str, config_hash: str):
        try:
            import fsspec
        except ImportError:  # pragma: no cover - fsspec comes with torch
            raise CodeclensError("a staging URL needs fsspec: pip install 'codeclens[ray]'") from None
        try:
            self.fs, root = fsspec.core.url_to_fs(url)
        except (ImportError, ValueError) as e:
            raise CodeclensError(f"staging URL {url}: {e} (s3:// needs s3fs, gs:// needs gcsfs)") from None
        self.url = url
        self.root = f"{root.rstrip('/')}/{config_hash}"

    def _put(self, local: str, remote: str) -> None:
        self.fs.makedirs(remote.rsplit("/", 1)[0], exist_ok=True)  # object stores: a no-op
        self.fs.put_file(local, remote)

    def _shard(self, i: int) -> str:
        from .writer import shard_path

        return f"{self.root}/shards/{shard_path('.', i).name}"

    def _encoded(self, i: int) -> str:
        return f"{self.root}/{ENCODED}/{self._shard(i).rsplit('/', 1)[1]}.npz"

    def committed(self, i: int) -> bool:
        return self.fs.exists(self._shard(i) + MARKER)

    def commit(self, i: int, write: Callable[[Path], float]) -> float:
        with tempfile.TemporaryDirectory(prefix="codeclens-shard-") as tmp:
            local = Path(tmp) / "shard"
            seconds = write(local)
            for f in sorted(local.iterdir()):
                self._put(str(f), f"{self._shard(i)}/{f.name}")
            self.fs.pipe_file(self._shard(i) + MARKER, b"")  # last: the shard exists from here on
        return seconds

    def has_encoded(self, i: int) -> bool:
        return self.fs.exists(self._encoded(i))

    def put_encoded(self, i: int, enc) -> None:
        from .writer import save_encoded

        with tempfile.TemporaryDirectory(prefix="codeclens-enc-") as tmp:
            save_encoded(enc, Path(tmp) / "enc.npz")
            part = self._encoded(i) + ".part"
            self._put(str(Path(tmp) / "enc.npz"), part)
            self.fs.mv(part, self._encoded(i))  # readers never see a half-uploaded file

    def get_encoded(self, i: int):
        from .writer import load_encoded

        with tempfile.TemporaryDirectory(prefix="codeclens-enc-") as tmp:
            self.fs.get_file(self._encoded(i), str(Path(tmp) / "enc.npz"))
            return load_encoded(Path(tmp) / "enc.npz")

    def drop_encoded(self, i: int) -> None:
        if self.fs.exists(self._encoded(i)):
            self.fs.rm(self._encoded(i))

    def fetch(self, i: int, dest: Path) -> None:
        """Copy committed shard ``i`` into the local build folder at ``dest`` (atomically)."""
        with atomic_dir(dest) as tmp:
            for p in self.fs.ls(self._shard(i), detail=False):
                self.fs.get_file(p, str(tmp / p.rstrip("/").rsplit("/", 1)[1]))

    def clear(self) -> None:
        """Remove this extraction's staging area (after the store is complete)."""
        if self.fs.exists(self.root):
            self.fs.rm(self.root, recursive=True)


def sink_for(cfg, store_dir: str | Path) -> LocalSink | UrlSink:
    """The sink an extraction's workers commit to: ``cfg.staging`` when set, else the build folder."""
    if not getattr(cfg, "staging", None):
        return LocalSink(store_dir)
    from ..util.provenance import config_hash

    return UrlSink(cfg.staging, config_hash(cfg.identity()))


def fetch_all(sink, store_dir: Path, todo) -> None:
    """Bring every committed remote shard of ``todo`` into ``store_dir`` (no-op for a local sink)."""
    if isinstance(sink, LocalSink):
        return
    from .writer import committed_shard, shard_path

    for i in todo:
        if not committed_shard(store_dir, i) and sink.committed(i):
            sink.fetch(i, shard_path(store_dir, i))


__all__ = ["LocalSink", "UrlSink", "sink_for", "fetch_all", "ENCODED"]
