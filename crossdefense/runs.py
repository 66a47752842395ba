"""Every name and path the project derives, each beside its parser: mixture files, run names,
generation outputs and their shards, the short model name.

Upstream's names are the contract (`saferpaca_Instructions_{K}_{N}_{task}.json`, checkpoints
`Instructions_{K}_{N}_{task}_{model}`); its misspelling `summrize` is read here, once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.tasks import MIX, TASK_NAMES

# upstream's and British spellings of a task, as they occur in its file and run names
TASK_SPELLINGS = {"summrize": "summarize", "summarise": "summarize"}
_MIXTURE_RE = re.compile(
    r"^saferpaca_Instructions_(?P<k>\d+)(?:_(?P<n>\d+)_(?P<task>[a-z]+))?\.json$"
)
_TASK_WORDS = "|".join((*TASK_SPELLINGS, *TASK_NAMES, MIX))
_RUN_RE = re.compile(
    rf"Instructions_(?P<k>\d+)_(?P<n>\d+)_(?P<task>{_TASK_WORDS})(?![a-z])", re.IGNORECASE
)
_SHARD_RE = re.compile(r"^(?P<stem>.+)\.shard(?P<i>\d+)-of-(?P<n>\d+)\.json$")
METHOD_SUFFIX = {"sft": "", "dpo": "_dpo"}


def canonical_task(word: str) -> str:
    """A task name as written in a file or run name, spelling variants resolved."""
    word = word.lower()
    return TASK_SPELLINGS.get(word, word)


# --------------------------------------------------------------------------- mixtures


MIXTURE_SUFFIX = {"sft": ".json", "dpo": ".dpo.json", "prompts": ".prompts.json"}


def mixture_name(num_safety: int, num_defense: int, task: str, format: str = "sft") -> str:
    """Upstream's file name; N=0 is the no-defense baseline `saferpaca_Instructions_{K}.json`.
    The builder's other formats end `.dpo.json` (preference pairs) and `.prompts.json`."""
    stem = f"saferpaca_Instructions_{num_safety}"
    if num_defense:
        stem += f"_{num_defense}_{task}"
    return stem + MIXTURE_SUFFIX[format]


def parse_mixture_name(path: str | Path) -> tuple[int, int, str | None]:
    """(K, N, task) from a mixture file name; the no-defense file gives (K, 0, None)."""
    name = Path(path).name
    m = _MIXTURE_RE.match(name)
    if m is None:
        raise UserError(
            f"{name}: not a mixture name (expected saferpaca_Instructions_K.json or "
            "saferpaca_Instructions_K_N_TASK.json)"
        )
    if m["n"] is None:
        return int(m["k"]), 0, None
    task = canonical_task(m["task"])
    if task not in (*TASK_NAMES, MIX):
        raise UserError(f"{name}: unknown task {m['task']!r} in mixture name")
    return int(m["k"]), int(m["n"]), task


def manifest_path(mixture: str | Path) -> Path:
    """`<mixture stem>.manifest.json` beside a mixture file (`.dpo.json`: its own manifest)."""
    mixture = Path(mixture)
    return mixture.with_name(mixture.stem + ".manifest.json")


# --------------------------------------------------------------------------- runs


def run_name(
    num_safety: int,
    num_defense: int,
    task: str,
    model: str,
    seed: int | None = None,
    method: str = "sft",
    from_sft: bool = False,
) -> str:
    """A trained run's name: upstream's `Instructions_{K}_{N}_{task}_{model}` (N=0, the
    no-defense baseline: `Instructions_{K}_{model}`), then `_dpo` for a preference run,
    `_from_sft` for one that started from an SFT adapter, `_seed{k}` on a seed axis."""
    if num_defense == 0:
        name = f"Instructions_{num_safety}_{model}"
    else:
        name = f"Instructions_{num_safety}_{num_defense}_{task}_{model}"
    name += METHOD_SUFFIX[method] + ("_from_sft" if from_sft else "")
    return name if seed is None else f"{name}_seed{seed}"


# in a training output folder from the start of a run until its adapter is complete
TRAINING_STARTED = "training_started.json"


def base_run_name(model: str) -> str:
    """The run of a model evaluated as it is, without an adapter (a sweep's BASE_RUNS)."""
    return f"base_{model}"


def train_from_name(name: str) -> dict[str, Any] | None:
    """{task, num_defense, num_safety} from an upstream-style run or adapter name, or None."""
    m = _RUN_RE.search(name)
    if m is None:
        return None
    return {
        "task": canonical_task(m["task"]),
        "num_defense": int(m["n"]),
        "num_safety": int(m["k"]),
    }


def short_model_name(model: str | None) -> str | None:
    """`meta-llama/Llama-2-7b-hf` -> `Llama-2-7b-hf`; a local folder -> its name."""
    if not model:
        return None
    return Path(str(model).rstrip("/")).name or str(model)


# --------------------------------------------------------------------------- eval parts


def eval_part_name(offset: int, limit: int, xstest_per_type: int = 0, seed: int = 0) -> str:
    """The folder of one part of the eval files (crossdefense.evalsets.Part): every part its
    own, so two sweeps never share one."""
    name = f"offset{offset}_limit{limit or 'all'}"
    return name + (f"_xstest{xstest_per_type}_seed{seed}" if xstest_per_type else "")


# --------------------------------------------------------------------------- generation outputs


@dataclass
class OutputPaths:
    final: Path  # <output_path>/<run>/<eval stem>[.shardI-of-N].json, written at the end
    jsonl: Path  # the per-record progress file beside it, appended as answers come


def shard_suffix(shard_index: int, num_shards: int) -> str:
    """`.shard{i}-of-{n}` for a shard of a split run, empty for an unsplit one."""
    return f".shard{shard_index}-of-{num_shards}" if num_shards > 1 else ""


def output_paths(
    output_path: str | Path, run: str, eval_path: str | Path, suffix: str = ""
) -> OutputPaths:
    """Where generation writes one eval file's answers for one run."""
    stem = Path(eval_path).stem + suffix
    run_dir = Path(output_path) / run
    return OutputPaths(run_dir / f"{stem}.json", run_dir / f"{stem}.jsonl")


def parse_shard_name(path: str | Path) -> tuple[str, int, int] | None:
    """(eval stem, shard index, number of shards) of a shard file name, or None."""
    m = _SHARD_RE.match(Path(path).name)
    return None if m is None else (m["stem"], int(m["i"]), int(m["n"]))


def is_shard(path: str | Path) -> bool:
    return parse_shard_name(path) is not None
