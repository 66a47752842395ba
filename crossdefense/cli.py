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


def run(main: Callable) -> None:
    """A fire script's entry point: unknown flags refused first, then ordinary failures end
    with one line and a status, never a traceback:
    - a `UserError` (bad input): `error: ...`, status 1;
    - an `OSError` while reading or writing (disk full, permission denied): `error: <path>: ...`,
      status 1 (outputs are written atomically, so nothing is left half-written);
    - Ctrl-C: one line, status 130; finished records and checkpoints are kept for a re-run.
    """
    import fire

    from crossdefense import UserError

    reject_unknown_flags(main)
    try:
        fire.Fire(main)
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(
            "\ninterrupted: finished work is kept; run the same command again to resume",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")
