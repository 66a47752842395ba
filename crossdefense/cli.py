"""Helpers for the python-fire scripts."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable


def reject_unknown_flags(main: Callable, argv: list[str] | None = None) -> None:
    """Exit with one line on a misspelt flag *before* any work starts.

    fire reports an unknown flag only after `main` has returned: a typo in a training
    command would otherwise cost the whole run.
    """
    argv = sys.argv[1:] if argv is None else argv
    known = set(inspect.signature(main).parameters)
    for arg in argv:
        if arg == "--":
            return
        if not arg.startswith("--") or arg in ("--help", "--helpfull"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("no"):  # fire's --noflag form of a boolean
            name = name[2:] if name[2:] in known else name
        if name.replace("-", "_") not in known:
            sys.exit(f"error: unknown flag --{name} (see --help)")
