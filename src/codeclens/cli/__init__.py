"""The ``codeclens`` command. Each module in this package adds one subcommand
(``add_parser(subparsers)``), so adding a command is adding a file."""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import pkgutil
import sys

from .. import __version__
from ..errors import CodeclensError


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; with ``argv``, of the command it names only, when that command's
    module has the command's name (importing every module costs ~0.7 s of CPU for modules the command
    never uses: torch's ablation code, scipy's FFT; a run of one analysis should not pay it)."""
    parser = argparse.ArgumentParser(
        prog="codeclens", description="What does each RVQ layer of a neural audio codec encode?"
    )
    parser.add_argument("--version", action="version", version=f"codeclens {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    mods = sorted((m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")))
    cmd = _command(argv)
    if cmd in mods:
        _add(sub, cmd)
        if cmd in sub.choices:
            return parser
        return build_parser()  # the module registers other names: build every command
    for name in mods:
        _add(sub, name)
    return parser


def _command(argv: list[str] | None) -> str | None:
    """The command word of ``argv`` (its first argument when that is not an option)."""
    return argv[0] if argv and not argv[0].startswith("-") else None


def _add(sub, name: str) -> None:
    module = importlib.import_module(f"{__name__}.{name}")
    if hasattr(module, "add_parser"):
        module.add_parser(sub)


FIXED_HEAP = frozenset({"ablate", "causal", "attributes", "codec", "extract", "run", "demo"})
"""Commands that run a codec's forward passes, utterance after utterance: they fix glibc's mmap
threshold first (util/heap.py says why). With the dynamic threshold one utterance of a
SpeechTokenizer ablate step peaked at 1.92 GB against 1.63 GB fixed. Analyses of a store do not:
there each big array's own mapping costs page faults (a default ``layer:k`` run at 4 M frames,
10.5 -> 14 s wall, 1.2 -> 3.9 s of system time) for 0.1 GB less peak, well under the bound."""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if args.command in FIXED_HEAP:
        from ..util.heap import mmap_large_buffers

        mmap_large_buffers()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        rc = args.func(args)
        return int(rc or 0)
    except CodeclensError as e:
        print(f"codeclens: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except OSError as e:  # a read-only folder, a full disk, --out under a file: the user's to fix
        print(f"codeclens: error: {os_error_message(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("codeclens: interrupted; finished work is kept, re-run the same command to resume", file=sys.stderr)
        return 130


def os_error_message(e: OSError) -> str:
    """One line for a failed file operation: the file, the cause, and what to do about it."""
    where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
    what = e.strerror or str(e) or type(e).__name__
    hint = ""
    if e.errno == errno.ENOSPC or e.errno == errno.EDQUOT:
        hint = "; free some space and re-run the same command: finished work is kept"
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a writable --out"
    return _one_line(f"{where}: {what}{hint}" if where else f"{what}{hint}")


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text else text


def entry() -> None:
    sys.exit(main())
