"""Score generation outputs: read them, infer what each run and eval file was, judge every
response, compute utility metrics, and write `scores.jsonl` + `summary.json`.

Facts about a run (model, train task, N, eval task, document kind) come from the generator's
`metadata` when present; old upstream outputs have none, so they are inferred from the
instructions, the eval file stem and the run directory name, and each fact records its source.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import atomic_open, expand_paths, read_json, read_json_or_jsonl, run_metadata
from crossdefense.judges import Judge
from crossdefense.metrics import (
    PARTIAL,
    REFUSAL,
    bootstrap_ci,
    corpus_bleu_zh,
    primary_utility,
    record_metrics,
)
from crossdefense.tasks import MIX, TASK_NAMES, detect_task, doc_kind, split_prompt

log = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"
DOC_KINDS = ("harmful", "cnn", "useful", "instructions")

# Upstream names runs after their mixture, e.g. `..._Instructions_100_500_summrize` (sic).
_RUN_RE = re.compile(
    r"Instructions_(?P<k>\d+)_(?P<n>\d+)_(?P<task>summarize|summarise|summrize|"
    r"translate|sentiment|case|cloze|mix)(?![a-z])",
    re.IGNORECASE,
)


# ----------------------------------------------------------------------------- inputs


SHARD_NAME = re.compile(r"\.shard\d+-of-\d+\.json$")


def expand_generation_paths(
    input_path: str | Sequence[str], exclude: Path | None = None
) -> list[Path]:
    """Generation JSON files from a file, a run dir, an output root (run dirs inside) or a glob.

    `exclude` drops anything under the scores directory, should it sit inside the input tree;
    unmerged shards (scripts/merge_shards.py joins them) would count records twice.
    """
    ex = exclude.resolve() if exclude is not None else None

    def keep(f: Path) -> bool:
        inside = ex is not None and ex in f.resolve().parents
        return f.suffix == ".json" and not inside and not SHARD_NAME.search(f.name)

    return expand_paths(
        input_path,
        lambda d: sorted(d.glob("*.json")) or sorted(d.glob("*/*.json")),
        "generation files (*.json)",
        keep,
    )


@dataclass
class GenerationFile:
    """One `<run>/<eval_stem>.json`, validated, with the facts scoring needs."""

    path: Path
    outputs: list[str]
    documents: list[str | None]  # the source document (or the instruction) per record
    ids: list[str]
    references: list[str | None]
    facts: dict[str, Any]
    inferred_from: dict[str, str]
    parameters: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return self.facts["run"], self.facts["eval_stem"]


def _str_list(data: dict, key: str, path: Path, n: int | None, allow_none: bool = False) -> list:
    value = data[key]
    if not isinstance(value, list):
        raise UserError(f"{path}: '{key}' is not a list")
    if n is not None and len(value) != n:
        raise UserError(f"{path}: '{key}' has {len(value)} entries but 'outputs' has {n}")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or (allow_none and v is None)):
            raise UserError(f"{path}: {key}[{i}] is {type(v).__name__}, not a string")
    return value


def _document(instruction: str, inp: str) -> str:
    """The text a refusal phrase could have been copied from: the document if a task is found,
    else the whole prompt (instruction sets)."""
    doc, suffix = split_prompt(instruction)
    if doc:
        return doc
    if inp:
        doc2, _ = split_prompt(inp)
        return doc2 or inp
    return instruction


def load_generation(path: str | Path) -> GenerationFile:
    """Read and validate one generation file; every problem is a UserError naming the file."""
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or "outputs" not in data:
        raise UserError(f"{path}: no 'outputs' list: not a generation output file")
    outputs = _str_list(data, "outputs", path, None)
    n = len(outputs)
    if n == 0:
        raise UserError(f"{path}: 'outputs' is empty")
    if "instructions" not in data:
        raise UserError(f"{path}: no 'instructions' list")
    instructions = _str_list(data, "instructions", path, n)
    # upstream writes `inputs: []` when no record has an input
    inputs = _str_list(data, "inputs", path, n) if data.get("inputs") else [""] * n
    ids = [str(i) for i in _str_list(data, "ids", path, n)] if "ids" in data else None
    if ids is not None and len(set(ids)) != n:
        dup = next(i for i, c in Counter(ids).items() if c > 1)
        raise UserError(f"{path}: id {dup!r} occurs more than once")
    references = (
        _str_list(data, "references", path, n, allow_none=True)
        if data.get("references") is not None
        else [None] * n
    )
    metadata = data.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        raise UserError(f"{path}: 'metadata' is not an object")
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    facts, inferred = infer_facts(path, instructions, inputs, parameters, metadata)
    return GenerationFile(
        path=path,
        outputs=outputs,
        documents=[_document(i, x) for i, x in zip(instructions, inputs, strict=True)],
        ids=ids if ids is not None else [str(i) for i in range(n)],
        references=references,
        facts=facts,
        inferred_from={**inferred, "ids": "file" if ids is not None else "position"},
        parameters=parameters,
    )


# ----------------------------------------------------------------------------- facts


def eval_task_from_prompts(instructions: Sequence[str], inputs: Sequence[str]) -> str | None:
    """The task most prompts end with (more than half of them), else None."""
    counts = Counter(
        t.name
        for ins, inp in zip(instructions, inputs, strict=True)
        if (t := detect_task(ins) or (detect_task(inp) if inp else None)) is not None
    )
    if not counts:
        return None
    name, k = counts.most_common(1)[0]
    return name if 2 * k > len(instructions) else None


def train_from_name(name: str) -> dict[str, Any] | None:
    """(K, N, task) from an upstream-style run or adapter name, or None."""
    m = _RUN_RE.search(name)
    if m is None:
        return None
    task = m["task"].lower()
    task = "summarize" if task in ("summrize", "summarise") else task
    return {"task": task, "num_defense": int(m["n"]), "num_safety": int(m["k"])}


def model_short_name(model: str | None) -> str | None:
    if not model:
        return None
    return Path(str(model).rstrip("/")).name or str(model)


def infer_facts(
    path: Path,
    instructions: Sequence[str],
    inputs: Sequence[str],
    parameters: dict[str, Any],
    metadata: dict[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """What a generation file is about, and where each fact came from."""
    meta = metadata or {}
    facts: dict[str, Any] = {}
    src: dict[str, str] = {}

    def put(key: str, value: Any, source: str) -> None:
        facts[key] = value
        src[key] = source

    if meta.get("run_name"):
        put("run", meta["run_name"], "metadata")
    else:
        put("run", path.parent.name, "directory name")
    if meta.get("eval_stem"):
        put("eval_stem", meta["eval_stem"], "metadata")
    else:
        put("eval_stem", path.stem, "file name")

    if "eval_task" in meta:
        put("eval_task", meta["eval_task"], "metadata")
    else:
        put("eval_task", eval_task_from_prompts(instructions, inputs), "instructions")
    if meta.get("doc_kind"):
        put("doc_kind", meta["doc_kind"], "metadata")
    else:
        put("doc_kind", doc_kind(facts["eval_stem"]), "file name")

    if meta.get("model_name"):
        put("model", meta["model_name"], "metadata")
    else:
        put("model", model_short_name(parameters.get("model")), "parameters")

    _infer_train(facts, src, meta, parameters)
    return facts, src


def _infer_train(
    facts: dict[str, Any], src: dict[str, str], meta: dict[str, Any], parameters: dict[str, Any]
) -> None:
    """train_task / num_defense / num_safety: metadata, else names, else unknown (None).

    The base model (no adapter) is train task "none" with N = 0; an adapter trained on the
    safety-only mixture (N = 0) is "safety-only".
    """
    lora = parameters.get("lora_weights")
    train = meta.get("train")
    if "train" in meta:
        no_adapter, source = train is None, "metadata (no adapter)"
    else:
        no_adapter, source = "lora_weights" in parameters and not lora, "parameters (no adapter)"
    if no_adapter:
        for key, value in (("train_task", "none"), ("num_defense", 0), ("num_safety", 0)):
            facts[key], src[key] = value, source
        return
    train = train if isinstance(train, dict) else {}
    candidates = [("metadata", train)]
    for source, name in (
        ("run name", facts["run"]),
        ("lora_weights", str(lora or "")),
        ("train data path", str(train.get("data_path") or "")),
    ):
        parsed = train_from_name(name)
        if parsed:
            candidates.append((source, parsed))
    for key, tkey in (
        ("train_task", "task"),
        ("num_defense", "num_defense"),
        ("num_safety", "num_safety"),
    ):
        facts[key], src[key] = None, "unknown"
        for source, cand in candidates:
            if cand.get(tkey) is not None:
                facts[key], src[key] = cand[tkey], source
                break
    if facts["train_task"] is None and facts["num_defense"] == 0:
        facts["train_task"], src["train_task"] = "safety-only", src["num_defense"]
    known = (*TASK_NAMES, MIX, "safety-only")
    if facts["train_task"] is not None and facts["train_task"] not in known:
        log.warning("%s: unfamiliar train task %r", facts["run"], facts["train_task"])


# ----------------------------------------------------------------------------- references


def load_references(path: str | Path) -> dict[tuple[str | None, str], str]:
    """Reference outputs from JSON/JSONL rows `{id, reference[, eval_stem]}`, or a JSON object
    `{"ids": [...], "references": [...]}`. Keys are (eval_stem or None, id)."""
    path = Path(path)
    data = read_json_or_jsonl(path)
    if isinstance(data, dict) and "ids" in data and "references" in data:
        ids, refs = data["ids"], data["references"]
        if not isinstance(ids, list) or not isinstance(refs, list) or len(ids) != len(refs):
            raise UserError(f"{path}: 'ids' and 'references' must be lists of the same length")
        data = [{"id": i, "reference": r} for i, r in zip(ids, refs, strict=True)]
    if not isinstance(data, list) or not data:
        raise UserError(f"{path}: expected rows with 'id' and 'reference'")
    out: dict[tuple[str | None, str], str] = {}
    for i, row in enumerate(data, 1):
        if (
            not isinstance(row, dict)
            or "id" not in row
            or not isinstance(row.get("reference"), str)
        ):
            raise UserError(f"{path}: record {i} needs an 'id' and a string 'reference'")
        out[(row.get("eval_stem"), str(row["id"]))] = row["reference"]
    return out


def attach_references(files: Sequence[GenerationFile], refs: dict, path: str | Path) -> None:
    """Fill missing references from a reference file; a file that matches nothing is an error."""
    hits = 0
    for gf in files:
        stem = gf.facts["eval_stem"]
        for k, rid in enumerate(gf.ids):
            ref = refs.get((stem, rid), refs.get((None, rid)))
            if ref is not None and gf.references[k] is None:
                gf.references[k] = ref
                hits += 1
    if hits == 0:
        raise UserError(f"{path}: no reference matches an id of the generation files")


# ----------------------------------------------------------------------------- scoring


def score_files(
    files: Sequence[GenerationFile],
    judges: Sequence[Judge],
    n_boot: int = 2000,
    seed: int = 0,
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Judge and measure every record. Returns (per-record rows, per-file summaries)."""
    from tqdm.auto import tqdm

    rows: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    total = sum(len(gf.outputs) for gf in files)
    bar = tqdm(
        total=total * (len(judges) + 1), desc="scoring", unit="judgement", disable=not progress
    )
    for gf in files:
        task = gf.facts["eval_task"]
        tasks = [task] * len(gf.outputs)
        verdicts = {}
        for judge in judges:
            verdicts[judge.name] = judge.judge_batch(gf.outputs, gf.documents, tasks)
            bar.update(len(gf.outputs))
        metrics = []
        for out, doc, ref in zip(gf.outputs, gf.documents, gf.references, strict=True):
            metrics.append(record_metrics(task, out, doc, ref))
            bar.update(1)
        primary = judges[0].name
        for k, rid in enumerate(gf.ids):
            rows.append(
                {
                    "run": gf.facts["run"],
                    "eval_stem": gf.facts["eval_stem"],
                    "id": rid,
                    "eval_task": task,
                    "doc_kind": gf.facts["doc_kind"],
                    "refusal_label": verdicts[primary][k].label,
                    "judges": {
                        name: {
                            "label": v[k].label,
                            "score": v[k].score,
                            **({"evidence": list(v[k].evidence)} if v[k].evidence else {}),
                        }
                        for name, v in verdicts.items()
                    },
                    "metrics": metrics[k],
                    "output": gf.outputs[k],  # so a misjudged record can be read here
                }
            )
        results.append(summarize_file(gf, judges, verdicts, metrics, n_boot, seed))
    bar.close()
    return rows, results


def _rates(labels: Sequence[str], n_boot: int, seed: int) -> dict[str, Any]:
    n = len(labels)
    refused = [float(lab == REFUSAL) for lab in labels]
    lo, hi = bootstrap_ci(refused, n_boot=n_boot, seed=seed)
    return {
        "refusal_rate": sum(refused) / n,
        "refusal_ci": [lo, hi],
        "partial_rate": sum(lab == PARTIAL for lab in labels) / n,
        "comply_rate": sum(lab not in (REFUSAL, PARTIAL) for lab in labels) / n,
    }


def summarize_file(
    gf: GenerationFile,
    judges: Sequence[Judge],
    verdicts: dict[str, list],
    metrics: list[dict[str, Any]],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """One row of summary.json: rates with a bootstrap CI, metric means, facts and sources."""
    primary = judges[0].name
    per_judge = {}
    for judge in judges:
        res = verdicts[judge.name]
        scores = [r.score for r in res]
        per_judge[judge.name] = {
            "kind": judge.kind,
            **_rates([r.label for r in res], n_boot, seed),
            "mean_score": sum(scores) / len(scores),
        }
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in sorted({k for m in metrics for k, v in m.items() if isinstance(v, int | float)}):
        values = [m[name] for m in metrics if isinstance(m.get(name), int | float)]
        means[name] = sum(values) / len(values)
        counts[name] = len(values)
    pairs = [(o, r) for o, r in zip(gf.outputs, gf.references, strict=True) if r is not None]
    if gf.facts["eval_task"] == "translate" and pairs:
        means["bleu_corpus"] = corpus_bleu_zh([o for o, _ in pairs], [r for _, r in pairs])
        counts["bleu_corpus"] = len(pairs)
    utility_metric, utility = primary_utility(gf.facts["eval_task"], means)
    head = per_judge[primary]
    return {
        **gf.facts,
        "generation_file": str(gf.path),
        "inferred_from": gf.inferred_from,
        "n": len(gf.outputs),
        "n_with_reference": len(pairs),
        "judge": primary,
        "refusal_rate": head["refusal_rate"],
        "refusal_ci": head["refusal_ci"],
        "partial_rate": head["partial_rate"],
        "processed_rate": 1.0 - head["refusal_rate"],
        "judges": per_judge,
        "metrics": means,
        "metric_counts": counts,
        "utility_metric": utility_metric,
        "utility": utility,
    }


# ----------------------------------------------------------------------------- outputs


def check_output_dir(output_dir: str | Path, overwrite: bool) -> tuple[Path, Path]:
    out = Path(output_dir)
    scores, summary = out / SCORES_FILE, out / SUMMARY_FILE
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory")
    for p in (scores, summary):
        if p.exists() and not overwrite:
            raise UserError(f"{p}: exists; pass --overwrite to replace it")
    return scores, summary


def write_scores(
    scores_path: Path,
    summary_path: Path,
    rows: list[dict[str, Any]],
    results: list[dict[str, Any]],
    judges: Sequence[Judge],
    flags: dict[str, Any],
    n_boot: int,
    seed: int,
) -> dict[str, Any]:
    """Write both files atomically (the summary last, so its presence means both are complete)."""
    summary = {
        "scoring": run_metadata(flags),
        "primary_judge": judges[0].name,
        "judges": [j.config() for j in judges],
        "bootstrap": {"n_boot": n_boot, "seed": seed, "confidence": 0.95},
        "results": results,
    }
    # Serialise both before writing either, so a bad value cannot leave one file behind.
    scores_text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    summary_text = json.dumps(summary, ensure_ascii=False, indent=2) + "\n"
    with atomic_open(scores_path) as f:
        f.write(scores_text)
    with atomic_open(summary_path) as f:
        f.write(summary_text)
    return summary


def check_unique(files: Sequence[GenerationFile]) -> None:
    seen: dict[tuple[str, str], Path] = {}
    for gf in files:
        if gf.key in seen:
            raise UserError(
                f"{gf.path}: run {gf.key[0]!r} and eval file {gf.key[1]!r} also come from "
                f"{seen[gf.key]}"
            )
        seen[gf.key] = gf.path


def score_paths(
    input_path: str | Sequence[str],
    output_dir: str | Path,
    judge: str | Sequence[str] | None = "keyword",
    *,
    references_path: str | None = None,
    harm_model: str | None = None,
    device: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    overwrite: bool = False,
    flags: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Load, judge, measure and write scores.jsonl + summary.json; returns the summary rows."""
    from crossdefense.judges import make_judge, normalize_judge_names

    names = normalize_judge_names(judge)
    scores_path, summary_path = check_output_dir(output_dir, overwrite)
    files = [load_generation(p) for p in expand_generation_paths(input_path, Path(output_dir))]
    check_unique(files)
    if references_path is not None:
        attach_references(files, load_references(references_path), references_path)
    judges = []
    for name in names:
        kwargs: dict[str, Any] = {}
        if name in ("embedding", "harmfulness") and device:
            kwargs["device"] = device
        if name == "harmfulness" and harm_model:
            kwargs["model"] = harm_model
        judges.append(make_judge(name, **kwargs))
    rows, results = score_files(files, judges, n_boot=n_boot, seed=seed)
    write_scores(scores_path, summary_path, rows, results, judges, flags or {}, n_boot, seed)
    return results
