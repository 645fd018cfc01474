"""``folder:PATH`` (or a bare folder path): every audio file below a folder.

The speaker is the name of the file's parent folder relative to the root (or
``unknown`` for files at the root), which fits the common speaker/file layout.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

from ..audio import AUDIO_EXTENSIONS
from ..errors import CodeclensError
from . import CORPORA
from .base import Corpus, Utterance


@CORPORA.register("folder")
class FolderCorpus(Corpus):
    options = ()

    def __init__(self, spec):
        super().__init__(spec)
        self.root = Path(spec.target)
        if not self.root.is_dir():
            raise CodeclensError(f"corpus folder not found: {spec.target}")

    def __iter__(self) -> Iterator[Utterance]:
        files = sorted(
            p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
        )
        for p in files:
            rel = p.relative_to(self.root)
            speaker = rel.parts[0] if len(rel.parts) > 1 else "unknown"
            yield Utterance(id=str(rel.with_suffix("")).replace(os.sep, "/"), path=str(p), speaker=speaker)
