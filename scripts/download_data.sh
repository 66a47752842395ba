#!/usr/bin/env bash
# Fetch upstream's evaluation files and safety pool into data/upstream/{evaluation,training}/ and
# XSTest (prompts + three models' human-labelled completions) into data/xstest/, checking each
# file's sha256 against data/upstream_sha256.txt / data/xstest_sha256.txt before moving it in.
#
#   scripts/download_data.sh                    # from GitHub (pinned commits)
#   scripts/download_data.sh --source DIR       # copy upstream files from a local mirror
#   scripts/download_data.sh --xstest_source DIR  # copy XSTest from a local mirror
#   scripts/download_data.sh --dest DIR         # write upstream files elsewhere than data/upstream/
#   scripts/download_data.sh --xstest_dest DIR  # write XSTest elsewhere than data/xstest/
#   scripts/download_data.sh --no_xstest        # skip XSTest
#   scripts/download_data.sh --extras           # also the online extras (see below)
#
# Files already present with the right hash are skipped, so a second run is a no-op. A failed
# download or a checksum mismatch stops with a one-line error and leaves no partial file.
# The file lists are the checksum files themselves. URLs can be overridden through the environment:
#   UPSTREAM_BASE  FYYFU/safety-defense data folder (21 evaluation files + the safety pool)
#   QHARM_URL      Q-Harm.json, which comes from vinid/safety-tuned-llamas
#   XSTEST_BASE    paul-rottger/exaggerated-safety at a pinned commit (XSTest, CC BY 4.0)
# --extras runs scripts/fetch_extras.py (needs the network and the `datasets` package) and writes
# into data/external/ (or --extras-dest DIR): alpaca_cleaned.json, beavertails_30k_unsafe.jsonl,
# cnn_references/test_*_cnn.json. Its python is $PYTHON, else .venv/bin/python, else python3.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
checksums="$repo_root/data/upstream_sha256.txt"
xstest_checksums="$repo_root/data/xstest_sha256.txt"
raw="https://raw.githubusercontent.com"
upstream_commit="b0c610c309fba211e4aa71279affaf06084a3201"  # FYYFU/safety-defense
qharm_commit="347bea9eaeb8cd82214fe604f1f9b1b134acd869"     # vinid/safety-tuned-llamas
upstream_data="instruction-llms-safety-eval/data"
UPSTREAM_BASE="${UPSTREAM_BASE:-$raw/FYYFU/safety-defense/$upstream_commit/$upstream_data}"
QHARM_URL="${QHARM_URL:-$raw/vinid/safety-tuned-llamas/$qharm_commit/data/evaluation/Q-Harm.json}"
xstest_commit="d7bb5bd738c1fcbc36edd83d5e7d1b71a3e2d84d"  # paul-rottger/exaggerated-safety
XSTEST_BASE="${XSTEST_BASE:-$raw/paul-rottger/exaggerated-safety/$xstest_commit}"

dest="$repo_root/data/upstream"
extras_dest="$repo_root/data/external"
xstest_dest="$repo_root/data/xstest"
source_dir=""
xstest_source=""
xstest=1
extras=0
tmp=""

die() {
  echo "error: $*" >&2
  exit 1
}

# value --flag=VALUE: VALUE, which must be a folder name (not empty, not another flag)
value() {
  local v="${1#*=}"
  if [[ -z "$v" || "$v" == -* ]]; then
    echo "error: ${1%%=*} needs a directory" >&2
    exit 1
  fi
  printf '%s' "$v"
}

usage() {
  sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

cleanup() {
  if [[ -n "$tmp" ]]; then rm -f -- "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

sha256() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum -- "$1" | cut -d' ' -f1
  else
    shasum -a 256 -- "$1" | cut -d' ' -f1
  fi
}

# fetch URL OUT: download URL to OUT; on failure print curl's (or wget's) last message line.
fetch() {
  local err
  if command -v curl >/dev/null 2>&1; then
    err="$(curl -fsSL --retry 2 --connect-timeout 20 -o "$2" -- "$1" 2>&1)" && return 0
  else
    err="$(wget -q -O "$2" -- "$1" 2>&1)" && return 0
  fi
  die "download failed: $1${err:+ (${err##*$'\n'})}"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --source) [[ $# -ge 2 && "$2" != -* ]] || die "--source needs a directory"; source_dir="$2"; shift 2 ;;
    --source=*) source_dir="$(value "$1")"; shift ;;
    --dest) [[ $# -ge 2 && "$2" != -* ]] || die "--dest needs a directory"; dest="$2"; shift 2 ;;
    --dest=*) dest="$(value "$1")"; shift ;;
    --xstest_source | --xstest-source)
      [[ $# -ge 2 && "$2" != -* ]] || die "$1 needs a directory"
      xstest_source="$2"
      shift 2
      ;;
    --xstest_source=* | --xstest-source=*) xstest_source="$(value "$1")"; shift ;;
    --xstest_dest | --xstest-dest)
      [[ $# -ge 2 && "$2" != -* ]] || die "$1 needs a directory"
      xstest_dest="$2"
      shift 2
      ;;
    --xstest_dest=* | --xstest-dest=*) xstest_dest="$(value "$1")"; shift ;;
    --no_xstest | --no-xstest) xstest=0; shift ;;
    --extras) extras=1; shift ;;
    --extras-dest)
      [[ $# -ge 2 && "$2" != -* ]] || die "--extras-dest needs a directory"
      extras_dest="$2"
      shift 2
      ;;
    --extras-dest=*) extras_dest="$(value "$1")"; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
done

# fetch_list CHECKSUMS DEST SOURCE_DIR BASE_URL FLAG: every file of a checksum list into DEST,
# from SOURCE_DIR (a local mirror with the same layout, given as FLAG) or from BASE_URL/<path>.
fetch_list() {
  local list="$1" into="$2" mirror="$3" base="$4" flag="$5"
  local fetched=0 skipped=0 expected rel target origin actual
  [[ -f "$list" ]] || die "$list: checksum list not found"
  while read -r expected rel; do
    [[ -n "$expected" ]] || continue
    [[ "$expected" =~ ^[0-9a-f]{64}$ && -n "$rel" ]] ||
      die "$list: malformed line: $expected $rel"
    target="$into/$rel"
    if [[ -f "$target" ]]; then
      if [[ "$(sha256 "$target")" == "$expected" ]]; then
        skipped=$((skipped + 1))
        continue
      fi
      echo "replacing $target (its sha256 does not match)" >&2
    fi
    if [[ -n "$mirror" && ! -f "$mirror/$rel" ]]; then
      die "$mirror/$rel: not found in the $flag mirror"
    fi
    mkdir -p -- "$(dirname -- "$target")"
    # The temp file sits beside the target so the final mv is an atomic rename.
    tmp="$(mktemp "$(dirname -- "$target")/.$(basename -- "$rel").XXXXXX")"
    if [[ -n "$mirror" ]]; then
      [[ -f "$mirror/$rel" ]] || die "$mirror/$rel: not found in the $flag mirror"
      cp -- "$mirror/$rel" "$tmp" 2>/dev/null || die "could not copy $mirror/$rel"
      origin="$mirror/$rel"
    else
      origin="$base/$rel"
      if [[ "$rel" == */Q-Harm.json ]]; then origin="$QHARM_URL"; fi
      fetch "$origin" "$tmp"
    fi
    actual="$(sha256 "$tmp")"
    [[ "$actual" == "$expected" ]] ||
      die "checksum mismatch for $rel from $origin: expected $expected, got $actual"
    chmod 644 "$tmp"
    mv -f -- "$tmp" "$target"
    tmp=""
    fetched=$((fetched + 1))
  done <"$list"
  echo "$into: $fetched file(s) fetched, $skipped already present, all sha256 verified"
}

if [[ -n "$source_dir" && ! -d "$source_dir" ]]; then die "--source $source_dir: not a directory"; fi
if [[ -n "$xstest_source" && ! -d "$xstest_source" ]]; then
  die "--xstest_source $xstest_source: not a directory"
fi

fetch_list "$checksums" "$dest" "$source_dir" "$UPSTREAM_BASE" --source
if [[ "$xstest" == 1 ]]; then
  fetch_list "$xstest_checksums" "$xstest_dest" "$xstest_source" "$XSTEST_BASE" --xstest_source
fi

if [[ "$extras" == 1 ]]; then
  python="${PYTHON:-}"
  if [[ -z "$python" ]]; then
    python=python3
    if [[ -x "$repo_root/.venv/bin/python" ]]; then python="$repo_root/.venv/bin/python"; fi
  fi
  "$python" "$repo_root/scripts/fetch_extras.py" \
    --dest "$extras_dest" --evaluation_dir "$dest/evaluation"
fi
