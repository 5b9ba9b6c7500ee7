"""The ``hydrapicker`` command line: a thin layer that parses arguments and calls the library.

Each verb is a module in this package (``hydrapicker/cli/<verb>.py``) whose docstring is its
``--help`` text and which defines ``add_arguments(parser)`` and ``main(args)``. Verbs are
discovered, not listed: adding a module adds a verb. Modules whose name starts with ``_``
are helpers, not verbs.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from hydrapicker import __version__
from hydrapicker.errors import HydraPickerError

__all__ = ["main", "build_parser"]


def _verb_modules() -> dict[str, object]:
    modules = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        modules[info.name.replace("_", "-")] = module
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hydrapicker",
        description="Particle picking for single-particle cryo-EM: zero-shot, few-shot, zero-label.",
    )
    parser.add_argument("--version", action="version", version=f"hydrapicker {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name, module in sorted(_verb_modules().items()):
        doc = (module.__doc__ or "").strip()
        summary = doc.splitlines()[0] if doc else name
        sub = verbs.add_parser(
            name, help=summary, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(sub)  # type: ignore[attr-defined]
        sub.set_defaults(_main=module.main)  # type: ignore[attr-defined]
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hydrapicker`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args._main(args)
    except HydraPickerError as exc:
        print(f"hydrapicker {args.verb}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the environment (permissions, a file gone) where no check of ours caught it
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"hydrapicker {args.verb}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"hydrapicker {args.verb}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
