"""``folder:PATH`` (or a bare folder path): every audio file below a folder.

The speaker is the name of the file's parent folder relative to the root (or
``unknown`` for files at the root), which fits the common speaker/file layout.
Symlinked folders and files are followed (a link back to a folder already being
walked is recorded, not followed again); folders that cannot be listed are
recorded in ``problems``; files without an audio extension are listed in
``ignored`` so that an empty result can say what it saw.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..audio import AUDIO_EXTENSIONS
from ..errors import CodeclensError
from . import CORPORA
from .base import ListedCorpus, Problem, Utterance


@CORPORA.register("folder")
class FolderCorpus(ListedCorpus):
    options = ()

    def __init__(self, spec):
        super().__init__(spec)
        self.root = Path(spec.target)
        if not self.root.is_dir():
            raise CodeclensError(f"corpus folder not found: {spec.target}")

    def _load(self) -> list[Utterance]:
        self.problems = []
        self.ignored = []
        files, self.ignored = walk_files(self.root, self.problems)
        out = []
        for p in files:
            rel = p.relative_to(self.root)
            speaker = rel.parts[0] if len(rel.parts) > 1 else "unknown"
            out.append(Utterance(id="/".join(rel.with_suffix("").parts), path=str(p), speaker=speaker))
        return out


def walk_files(root: Path, problems: list[Problem], suffixes=AUDIO_EXTENSIONS) -> tuple[list[Path], list[Problem]]:
    """Files below ``root`` with one of ``suffixes``, in path order, through symlinks.

    Each real folder is read once (a symlink loop is recorded and not followed again);
    unlistable folders and broken links go to ``problems``; other files are returned as
    ``ignored`` records."""
    found: list[Path] = []
    ignored: list[Problem] = []
    seen: set[tuple[int, int]] = set()
    stack = [Path(root)]
    while stack:
        d = stack.pop()
        try:
            st = d.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen:
                problems.append(Problem(str(d), f"{d}: symlink loop (links to a folder already read); not followed again"))
                continue
            seen.add(key)
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as e:
            problems.append(Problem(str(d), f"{d}: unreadable folder ({e.strerror or e})"))
            continue
        for e in entries:
            p = Path(e.path)
            try:
                is_dir, is_file = e.is_dir(), e.is_file()  # both follow symlinks
            except OSError as err:
                problems.append(Problem(str(p), f"{p}: unreadable ({err.strerror or err})"))
                continue
            if is_dir:
                stack.append(p)
            elif is_file and p.suffix.lower() in suffixes:
                found.append(p)
            elif e.is_symlink() and not is_file:
                problems.append(Problem(str(p), f"{p}: broken symlink"))
            elif is_file:
                ignored.append(Problem(str(p), f"{p}: unsupported file name (expected {', '.join(suffixes)})"))
    found.sort(key=lambda p: p.relative_to(root).parts)
    return found, ignored
