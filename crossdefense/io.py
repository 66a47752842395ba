"""JSON/JSONL reading with one-line errors, atomic writes, and run metadata."""

from __future__ import annotations

import datetime as _dt
import glob
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.paths import REPO_ROOT


def expand_paths(
    spec: str | Path | Sequence[str | Path],
    in_dir: Callable[[Path], list[Path]],
    what: str,
    keep: Callable[[Path], bool] | None = None,
) -> list[Path]:
    """Files named by a path, a folder (`in_dir` picks its files), a glob, or several of these
    (a sequence or a comma-separated string); each part must yield at least one file."""
    from crossdefense.cli import as_list

    paths: list[Path] = []
    for part in as_list(spec):
        p = Path(part).expanduser()
        if p.is_dir():
            found = in_dir(p)
        elif any(c in part for c in "*?["):
            found = sorted(Path(x) for x in glob.glob(part, recursive=True))
        else:
            check_file(p)
            found = [p]
        found = [f for f in found if f.is_file() and (keep is None or keep(f))]
        if not found:
            raise UserError(f"{part}: no {what} found")
        paths.extend(found)
    if not paths:
        raise UserError(f"no {what} given")
    return list(dict.fromkeys(paths))


def check_file(path: Path, what: str = "file") -> None:
    """A UserError unless `path` is a regular file: missing, a folder, or a device each say so."""
    if path.is_file():
        return
    if path.is_dir():
        raise UserError(f"{path}: is a directory, not a {what}")
    if path.exists():
        raise UserError(f"{path}: not a regular file")
    raise UserError(f"{path}: file not found")


def read_json(path: str | Path) -> Any:
    """Parse a JSON file; a missing, non-UTF-8 or malformed file is a UserError naming it."""
    path = Path(path)
    check_file(path, "JSON file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path}: malformed JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def read_jsonl(path: str | Path) -> list[Any]:
    """Parse a JSON-lines file (blank lines ignored); errors name the file and line."""
    path = Path(path)
    check_file(path, "JSONL file")
    rows = []
    try:
        with path.open(encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise UserError(f"{path}: malformed JSON on line {lineno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from None
    return rows


def read_json_or_jsonl(path: str | Path) -> Any:
    """Read `.jsonl` as lines, anything else as one JSON document."""
    return read_jsonl(path) if str(path).endswith(".jsonl") else read_json(path)


@contextmanager
def atomic_open(path: str | Path, mode: str = "w"):
    """Write to a temp file beside `path` and rename it into place only on success."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a directory; give a file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except OSError as e:  # name the file the user asked for, not the temp file
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror, str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    """Atomically write JSON (UTF-8, not ASCII-escaped, newline-terminated)."""
    with atomic_open(path) as f:
        json.dump(obj, f, ensure_ascii=False, indent=indent)
        f.write("\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> None:
    """Atomically write JSON lines."""
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(path: str | Path, row: Any) -> None:
    """Append one line and flush it to disk: the resumable log of generation."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def git_hash() -> str | None:
    """Commit of the project checkout (suffixed `-dirty` when there are local changes)."""
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return rev + ("-dirty" if dirty else "")


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("crossdefense", "torch", "transformers", "peft", "accelerate", "bitsandbytes"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def run_metadata(flags: dict[str, Any]) -> dict[str, Any]:
    """What every output records about how it was made."""
    return {
        "flags": flags,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git_hash": git_hash(),
        "versions": library_versions(),
        "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
    }


_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def path_component(value: object, what: str) -> str:
    """A name used as one folder or file name (a run name, a model name): letters, digits and
    `._-`, not starting with a dot, so it can never climb out of (`..`) or replace (`/abs`)
    the folder it is joined to. fire turns `--run_name 2024` into an int: accepted as text."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise UserError(f"{what}: {value!r} is not a name")
    name = str(value)
    if not _COMPONENT.match(name):
        raise UserError(
            f"{what}: {name!r} must be a single folder name (letters, digits, '.', '_', '-', "
            "not starting with '.' or containing '/')"
        )
    return name


LOCK_FILE = ".crossdefense.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def live_writer(directory: str | Path) -> dict[str, Any] | None:
    """The holder (pid, host, started) of a live output lock in `directory`, if any: a lock of
    a process that is still running here, or of another host (which cannot be checked)."""
    for path in sorted(Path(directory).glob(f"{LOCK_FILE.removesuffix('.lock')}*.lock")):
        try:
            holder = json.loads(path.read_text(encoding="utf-8") or "{}")
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(holder, dict):
            continue
        pid, host = holder.get("pid"), holder.get("host")
        if not isinstance(pid, int):
            continue
        if host != platform.node() or _alive(pid):
            return {**holder, "lock": str(path)}
    return None


@contextmanager
def output_lock(directory: str | Path, what: str = "run", name: str = LOCK_FILE):
    """One writer per output folder (or per `name` in it, e.g. per shard): an advisory lock
    file holding the writer's PID and host.

    A second writer stops with one line naming the first; a lock left by a dead process on this
    host is reported and taken over (on another host it cannot be checked, so it is refused).
    The folders the lock had to create (the run folder and any missing parents) are removed
    again, innermost first, as far as the work left them empty (a failure before any output).
    """
    directory = Path(directory)
    created = [d for d in (directory, *directory.parents) if not d.exists()]
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    me = {"pid": os.getpid(), "host": platform.node(), "started": _dt.datetime.now().isoformat()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = json.loads(path.read_text(encoding="utf-8") or "{}")
            except (OSError, json.JSONDecodeError):
                holder = {}
            holder = holder if isinstance(holder, dict) else {}
            pid, host = holder.get("pid"), holder.get("host")
            # an empty lock: its writer died between creating and filling it (a microsecond)
            dead = host is None and pid is None
            if dead or (host == me["host"] and isinstance(pid, int) and not _alive(pid)):
                import logging

                logging.getLogger(__name__).warning(
                    "%s: stale lock of dead process %s removed", path, pid
                )
                path.unlink(missing_ok=True)
                continue
            raise UserError(
                f"{directory}: another {what} is writing here (pid {pid} on {host}, since "
                f"{holder.get('started')}); wait for it, or delete {path} if it is gone"
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(me, f)
        break
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        for folder in created:  # innermost first; stop at the first one holding something
            if any(folder.iterdir()):
                break
            folder.rmdir()


def check_not_generation_folder(out: str | Path, flag: str = "--output_dir") -> None:
    """A generation run folder (`<stem>.json` beside its `<stem>.jsonl` progress log) is no
    place for other outputs: scoring would later read them as generation files."""
    out = Path(out)
    progress = [*out.glob("*.jsonl"), *out.glob("*/*.jsonl")] if out.is_dir() else []
    if any(j.with_suffix(".json").is_file() for j in progress):  # a run folder, or their root
        raise UserError(
            f"{flag} {out}: holds generation outputs (<eval>.json + .jsonl); choose another folder"
        )
