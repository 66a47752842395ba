"""Helpers for the python-fire scripts."""

from __future__ import annotations

import inspect
import logging
import sys
from collections.abc import Callable
from typing import Any


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
        short = arg[1:].split("=", 1)[0]
        if arg.startswith("-") and not arg.startswith("--") and short.isalpha():
            # fire maps `-o` to the first flag starting with o: ambiguous and silent
            if short == "h":
                continue
            near = sorted(k for k in known if k.startswith(short[0]))
            hint = f" ({', '.join('--' + k for k in near)})" if near else ""
            sys.exit(f"error: short flag {arg} is not supported; use the full name{hint}")
        if not arg.startswith("--") or arg in ("--help", "--helpfull"):
            continue
        name = arg[2:].split("=", 1)[0]
        if name.startswith("no"):  # fire's --noflag form of a boolean
            name = name[2:] if name[2:] in known else name
        if name.replace("-", "_") not in known:
            sys.exit(f"error: unknown flag --{name} (see --help)")
    missing = missing_required(main, argv)
    if missing:
        sys.exit(f"error: missing --{missing} (see --help)")


def missing_required(main: Callable, argv: list[str]) -> str | None:
    """The first required parameter that neither a flag nor a positional value gives, as fire
    would assign them (a `--flag` takes the next word as its value unless that is a flag);
    fire itself would print its usage text instead of one line."""
    if any(a in ("--help", "--helpfull", "-h") for a in argv):
        return None
    params = list(inspect.signature(main).parameters.values())
    flagged, positional, i = set(), 0, 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            flagged.add(
                name[2:] if name.startswith("no") and name[2:] in {p.name for p in params} else name
            )
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1  # its value
        elif arg.startswith("-") and len(arg) == 2:
            return None  # a fire short flag: leave the check to fire
        else:
            positional += 1
        i += 1
    open_params = [p for p in params if p.name not in flagged]
    for k, p in enumerate(open_params):
        if p.default is inspect.Parameter.empty and k >= positional:
            return p.name
    return None


def as_list(value: Any, unique: bool = True) -> list[str]:
    """A list-valued flag as fire hands it -- `a` (str), `a,b` (tuple), `[a, b]` (upstream's
    bracketed form), a number, a list, None -- as its items: stripped of spaces and quotes,
    empty ones dropped, in order; repeats dropped too unless `unique=False` (for a caller that
    refuses them). The one home of this rule for every script."""
    if value is None:
        return []
    if isinstance(value, str):
        text = value.strip()
        items: list[Any] = [text[1:-1] if text[:1] + text[-1:] == "[]" else text]
    elif isinstance(value, tuple | list | set | frozenset):
        items = list(value)
    else:
        items = [value]
    out: list[str] = []
    for item in items:
        for part in str(item).split(","):
            part = part.strip().strip("'\"").strip()
            if part and (not unique or part not in out):
                out.append(part)
    return out


def as_ints(value: Any, flag: str, unique: bool = True) -> list[int]:
    """`as_list`, each item a whole number (`--seeds 1,2,3`, `--numbers 40`)."""
    from crossdefense import UserError

    out = []
    for item in as_list(value, unique):
        try:
            number = float(item)
        except ValueError:
            number = float("nan")
        if not number.is_integer():
            raise UserError(f"--{flag}: {item!r} is not a whole number")
        out.append(int(number))
    return out


def _kinds(annotation: Any) -> set[type]:
    """The plain types an annotation admits (`str | tuple[str, ...] | None` -> str, tuple,
    NoneType); empty when it says nothing checkable."""
    import types
    import typing

    if annotation is inspect.Parameter.empty or annotation is Any:
        return set()
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_kinds(a) for a in typing.get_args(annotation)))
    if origin is not None:
        return {origin} if isinstance(origin, type) else set()
    return {annotation} if isinstance(annotation, type) else set()


def coerce_flag(name: str, value: Any, annotation: Any) -> Any:
    """What fire parsed, checked against the parameter's annotation.

    fire guesses types from the text: `--output_dir` with no value is True, `--run_name 2024`
    an int, `--x a,b` a tuple, `--n abc` a string. A number where text is wanted becomes text
    again; a missing value or a word where a number is wanted is a UserError naming the flag.
    """
    from crossdefense import UserError

    kinds = _kinds(annotation)
    if not kinds or type(value) in kinds or value is None:
        return value
    flag = f"--{name}"
    if bool in kinds and not isinstance(value, bool):
        # a switch given a word: fire keeps `--overwrite no` as the text "no", which is truthy
        word = str(value).strip().lower()
        if word in ("true", "yes", "on", "1"):
            return True
        if word in ("false", "no", "off", "0"):
            return False
        raise UserError(f"{flag} is a switch: give {flag} or --no{name} (not {value!r})")
    if isinstance(value, bool):
        if kinds & {str, tuple, list, float, int}:
            raise UserError(f"{flag} needs a value")
        return value
    if isinstance(value, int | float) and str in kinds:
        # the text as typed (fire reads `--run_name 0x1F` as 31 and `3e-4` as 0.0003)
        return raw_flag_text(name) or str(value)
    if isinstance(value, int) and float in kinds:
        return value
    if isinstance(value, tuple | list) and str in kinds and not kinds & {tuple, list}:
        return ",".join(str(v) for v in value)
    if int in kinds and not kinds & {float, str}:
        raise UserError(f"{flag} must be an integer, not {value!r}")
    if float in kinds and not kinds & {str}:
        raise UserError(f"{flag} must be a number, not {value!r}")
    return value


def raw_flag_text(name: str, argv: list[str] | None = None) -> str | None:
    """What followed `--name` (or `--name=`) on the command line, as typed; None if absent."""
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--":
            break
        for spelling in (f"--{name}", f"--{name.replace('_', '-')}"):
            if arg.startswith(spelling + "="):
                return arg[len(spelling) + 1 :]
            if arg == spelling and i + 1 < len(argv):
                return argv[i + 1]
    return None


def checked(main: Callable) -> Callable:
    """`main` with every argument passed through `coerce_flag` before it runs."""
    import functools
    import typing

    sig = inspect.signature(main)
    hints = typing.get_type_hints(main)

    @functools.wraps(main)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(*args, **kwargs)
        for name in list(bound.arguments):
            bound.arguments[name] = coerce_flag(name, bound.arguments[name], hints.get(name))
        return main(*bound.args, **bound.kwargs)

    return wrapper


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
    # `-h` is help in every script, never a short form of a flag that starts with h
    sys.argv = [sys.argv[0], *("--help" if a == "-h" else a for a in sys.argv[1:])]
    logging.getLogger("torch").setLevel(logging.WARNING)  # no cache statistics at exit
    try:
        fire.Fire(checked(main))
    except UserError as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        print(
            "\ninterrupted: nothing half-written is left and finished work is kept (run the "
            "same command again: generation resumes from its finished records; training "
            "resumes with --resume_from_checkpoint <output_dir>/checkpoint-<step>)",
            file=sys.stderr,
        )
        sys.exit(130)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        sys.exit(f"error: {where}{e.strerror or e}")
