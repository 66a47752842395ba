"""Score generation outputs: read them, infer what each run and eval file was, judge every
response, compute utility metrics, and write `scores.jsonl` + `summary.json`.

Facts about a run (model, train task, N, eval task, document kind) come from the generator's
`metadata` when present; old upstream outputs have none, so they are inferred from the
instructions, the eval file stem and the run directory name, and each fact records its source.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import (
    atomic_open,
    expand_paths,
    output_lock,
    read_json,
    read_json_or_jsonl,
    run_metadata,
    sha256_file,
)
from crossdefense.judges import UNPARSED, Judge
from crossdefense.metrics import (
    PARTIAL,
    REFUSAL,
    corpus_bleu_zh,
    corpus_chrf_zh,
    primary_utility,
    record_metrics,
)
from crossdefense.runs import is_shard, short_model_name, train_from_name
from crossdefense.stats import CONFIDENCE, cohen_kappa, mcnemar_exact, wilson
from crossdefense.tasks import MIX, TASK_NAMES, doc_kind, majority_task, split_prompt

log = logging.getLogger(__name__)

SCORES_FILE = "scores.jsonl"
SUMMARY_FILE = "summary.json"
# 2: Wilson intervals (was a percentile bootstrap), `unparsed` labels, judge agreement,
#    paired McNemar tests against the base model, a `seed` fact.
SCHEMA_VERSION = 2
# The fixed fields of a scores.jsonl row, in order (a record with a category adds `type`);
# the readers of scores.jsonl (the Inspect export, the trackers' sample table) take them here.
ROW_FIELDS = (
    "run",
    "eval_stem",
    "id",
    "eval_task",
    "doc_kind",
    "refusal_label",
    "judges",
    "metrics",
    "output",
)

# ----------------------------------------------------------------------------- inputs


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
        return f.suffix == ".json" and not inside and not is_shard(f)

    def in_dir(d: Path) -> list[Path]:
        return sorted(d.glob("*.json")) or sorted(d.glob("*/*.json"))

    try:
        return expand_paths(input_path, in_dir, "generation files (*.json)", keep)
    except UserError:
        try:  # say why the files that are there do not count
            raw = [f for f in expand_paths(input_path, in_dir, "files") if f.suffix == ".json"]
        except UserError:
            raw = []
        if raw and all(is_shard(f) for f in raw):
            raise UserError(
                f"{input_path}: only unmerged shards (*.shardK-of-N.json); join them with "
                "scripts/merge_shards.py first"
            ) from None
        if raw and ex is not None and all(ex in f.resolve().parents for f in raw):
            raise UserError(
                f"{input_path}: the generation files lie inside --output_dir {exclude}; "
                "choose another --output_dir"
            ) from None
        raise


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
    kinds: list[str | None] | None = None  # per-record document kinds the eval file declared
    types: list[str | None] | None = None  # per-record categories (XSTest's `type`)

    def record_kind(self, k: int) -> str | None:
        return self.kinds[k] if self.kinds and self.kinds[k] else self.facts["doc_kind"]

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
    kinds = _str_list(data, "kinds", path, n, allow_none=True) if data.get("kinds") else None
    types = _str_list(data, "types", path, n, allow_none=True) if data.get("types") else None
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
        kinds=kinds,
        types=types,
    )


# ----------------------------------------------------------------------------- facts


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
        put("eval_task", majority_task(instructions, inputs), "instructions")
    if meta.get("doc_kind"):
        put("doc_kind", meta["doc_kind"], "metadata")
    else:
        put("doc_kind", doc_kind(facts["eval_stem"]), "file name")

    if meta.get("model_name"):
        put("model", meta["model_name"], "metadata")
    else:
        put("model", short_model_name(parameters.get("model")), "parameters")

    _infer_train(facts, src, meta, parameters)
    train = meta.get("train") if isinstance(meta.get("train"), dict) else {}
    facts["seed"], src["seed"] = (
        (train["seed"], "metadata") if train.get("seed") is not None else (None, "unknown")
    )
    # the training objective: sft (the paper) unless the adapter's run_config says otherwise
    if facts["train_task"] == "none":
        facts["method"], src["method"] = None, src["train_task"]
    elif train.get("method"):
        facts["method"], src["method"] = train["method"], "metadata"
    else:
        facts["method"], src["method"] = "sft", "default"
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
    hits, used = 0, set()
    for gf in files:
        stem = gf.facts["eval_stem"]
        missing = 0
        for k, rid in enumerate(gf.ids):
            key = (stem, rid) if (stem, rid) in refs else (None, rid)
            ref = refs.get(key)
            if ref is not None:
                used.add(key)
            if ref is not None and gf.references[k] is None:
                gf.references[k] = ref
                hits += 1
            missing += gf.references[k] is None
        if 0 < missing < len(gf.ids):  # utility then stands for part of the file only
            log.warning(
                "%s: %d of %d records have no reference; utility covers the other %d",
                gf.path,
                missing,
                len(gf.ids),
                len(gf.ids) - missing,
            )
    if hits == 0:
        raise UserError(f"{path}: no reference matches an id of the generation files")
    if len(used) < len(refs):
        log.warning(
            "%s: %d of its %d references match no scored record (another eval set?)",
            path,
            len(refs) - len(used),
            len(refs),
        )


# ----------------------------------------------------------------------------- scoring


def score_files(
    files: Sequence[GenerationFile],
    judges: Sequence[Judge],
    progress: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Judge and measure every record. Returns (per-record rows, per-file summaries); the
    summaries of adapters carry an exact McNemar test against the base model's run."""
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
                    "doc_kind": gf.record_kind(k),
                    **({"type": gf.types[k]} if gf.types else {}),
                    "refusal_label": verdicts[primary][k].label,
                    "judges": {
                        name: {
                            "label": v[k].label,
                            # strict JSON has no NaN (an unparsed generative answer)
                            "score": None if math.isnan(v[k].score) else v[k].score,
                            **({"evidence": list(v[k].evidence)} if v[k].evidence else {}),
                            **({"extra": v[k].extra} if v[k].extra else {}),
                        }
                        for name, v in verdicts.items()
                    },
                    "metrics": metrics[k],
                    "output": gf.outputs[k],  # so a misjudged record can be read here
                }
            )
        results.append(summarize_file(gf, judges, verdicts, metrics))
    bar.close()
    add_paired_tests(rows, results)
    return rows, results


def _ci(k: int, n: int) -> list[float] | None:
    ci = wilson(k, n)
    return list(ci) if ci else None


def _rates(labels: Sequence[str]) -> dict[str, Any]:
    """Rates over the responses the judge could label; `unparsed` ones (a generative judge
    answered outside its labels) are counted and left out of every denominator."""
    parsed = [lab for lab in labels if lab != UNPARSED]
    n = len(parsed)
    k = sum(lab == REFUSAL for lab in parsed)
    partial = sum(lab == PARTIAL for lab in parsed)
    return {
        "n_parsed": n,
        "n_unparsed": len(labels) - n,
        "refusals": k,
        "refusal_rate": k / n if n else None,
        "refusal_ci": _ci(k, n),
        "partial_rate": partial / n if n else None,
        "partial_ci": _ci(partial, n),
        "comply_rate": (n - k - partial) / n if n else None,
    }


def agreement(verdicts: dict[str, list], judges: Sequence[Judge]) -> dict[str, Any]:
    """Pairwise agreement of the refusal judges on refusal vs not (responses both could
    label): raw agreement and Cohen's kappa."""
    names = [j.name for j in judges if j.kind == "refusal"]
    out: dict[str, Any] = {}
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pairs = [
                (x.label == REFUSAL, y.label == REFUSAL)
                for x, y in zip(verdicts[a], verdicts[b], strict=True)
                if UNPARSED not in (x.label, y.label)
            ]
            la = ["refusal" if x else "other" for x, _ in pairs]
            lb = ["refusal" if y else "other" for _, y in pairs]
            out[f"{a}|{b}"] = {
                "n": len(pairs),
                "agreement": sum(x == y for x, y in pairs) / len(pairs) if pairs else None,
                "kappa": cohen_kappa(la, lb),
            }
    return out


def paired_ids(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """The ids two label maps (id -> label) both have and both judges could label."""
    return [i for i in a if i in b and UNPARSED not in (a[i], b[i])]


def paired_refusals(a: dict[str, str], b: dict[str, str]) -> dict[str, Any]:
    """Exact McNemar test of refusal vs not between two label maps, on their `paired_ids`."""
    ids = paired_ids(a, b)
    return mcnemar_exact([a[i] == REFUSAL for i in ids], [b[i] == REFUSAL for i in ids])


def add_paired_tests(rows: Sequence[dict[str, Any]], results: list[dict[str, Any]]) -> None:
    """For every adapter run, an exact McNemar test of its refusals against the base model's
    (same model, same eval file, the same documents by id), per judge: `vs_base`."""
    labels: dict[tuple[str, str], dict[str, dict[str, str]]] = defaultdict(dict)
    kinds: dict[tuple[str, str], dict[str, str | None]] = defaultdict(dict)
    for r in rows:
        labels[(r["run"], r["eval_stem"])][r["id"]] = {
            name: v["label"] for name, v in r["judges"].items()
        }
        kinds[(r["run"], r["eval_stem"])][r["id"]] = r.get("doc_kind")
    bases = {
        (r.get("model"), r["eval_stem"]): r["run"] for r in results if r.get("train_task") == "none"
    }
    for res in results:
        base = bases.get((res.get("model"), res["eval_stem"]))
        if base is None or base == res["run"]:
            continue
        mine, theirs = labels[(res["run"], res["eval_stem"])], labels[(base, res["eval_stem"])]
        shared = [i for i in mine if i in theirs]
        if not shared:  # e.g. an old upstream file whose ids are positions of another file
            continue
        tests = {}
        for name in res["judges"]:
            test = paired_refusals(
                {i: mine[i][name] for i in shared}, {i: theirs[i][name] for i in shared}
            )
            tests[name] = {
                "n_pairs": test["n_pairs"],
                "adapter_only": test["a_only"],
                "base_only": test["b_only"],
                "p_value": test["p_value"],
            }
        res["vs_base"] = {"run": base, "test": "exact McNemar, refusal vs not", "judges": tests}
        head = tests.get(res["judge"])
        res["vs_base_p"] = head["p_value"] if head else None
        for kind, part in (res.get("by_kind") or {}).items():
            ids = [i for i in shared if kinds[(res["run"], res["eval_stem"])].get(i) == kind]
            test = paired_refusals(
                {i: mine[i][res["judge"]] for i in ids}, {i: theirs[i][res["judge"]] for i in ids}
            )
            if test["n_pairs"]:
                part["vs_base_p"] = test["p_value"]


def summarize_file(
    gf: GenerationFile,
    judges: Sequence[Judge],
    verdicts: dict[str, list],
    metrics: list[dict[str, Any]],
) -> dict[str, Any]:
    """One row of summary.json: rates with Wilson intervals, metric means, facts, sources."""
    primary = judges[0].name
    per_judge = {}
    for judge in judges:
        res = verdicts[judge.name]
        scores = [r.score for r in res if r.label != UNPARSED and not math.isnan(r.score)]
        per_judge[judge.name] = {
            "kind": judge.kind,
            **_rates([r.label for r in res]),
            "mean_score": sum(scores) / len(scores) if scores else None,
        }
    means: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in sorted({k for m in metrics for k, v in m.items() if isinstance(v, int | float)}):
        values = [m[name] for m in metrics if isinstance(m.get(name), int | float)]
        means[name] = sum(values) / len(values)
        counts[name] = len(values)
    pairs = [(o, r) for o, r in zip(gf.outputs, gf.references, strict=True) if r is not None]
    if gf.facts["eval_task"] == "translate" and pairs:
        preds, refs = [o for o, _ in pairs], [r for _, r in pairs]
        means["bleu_corpus"] = corpus_bleu_zh(preds, refs)
        means["chrf_corpus"] = corpus_chrf_zh(preds, refs)
        counts["bleu_corpus"] = counts["chrf_corpus"] = len(pairs)
    utility_metric, utility = primary_utility(gf.facts["eval_task"], means)
    head = per_judge[primary]
    extra = {"by_kind": by_kind(gf, verdicts, judges)} if gf.kinds or gf.types else {}
    return {
        **gf.facts,
        "generation_file": str(gf.path),
        "generation_sha256": sha256_file(gf.path),
        "inferred_from": gf.inferred_from,
        "n": len(gf.outputs),
        "n_with_reference": len(pairs),
        "judge": primary,
        "refusal_rate": head["refusal_rate"],
        "refusal_ci": head["refusal_ci"],
        "refusals": head["refusals"],
        "n_parsed": head["n_parsed"],
        "partial_rate": head["partial_rate"],
        "processed_rate": None if head["refusal_rate"] is None else 1.0 - head["refusal_rate"],
        "judges": per_judge,
        "agreement": agreement(verdicts, judges),
        "metrics": means,
        "metric_counts": counts,
        "utility_metric": utility_metric,
        "utility": utility,
        **extra,
    }


def by_kind(
    gf: GenerationFile, verdicts: dict[str, list], judges: Sequence[Judge]
) -> dict[str, dict[str, Any]]:
    """Rates per declared document kind (e.g. XSTest's safe and unsafe prompts), each with its
    Wilson interval, every judge's rates, and the headline judge's rate per type."""
    primary = judges[0].name
    groups: dict[str, list[int]] = defaultdict(list)
    for k in range(len(gf.outputs)):
        groups[gf.record_kind(k) or "unknown"].append(k)
    out: dict[str, dict[str, Any]] = {}
    for kind, idx in sorted(groups.items()):
        head = _rates([verdicts[primary][k].label for k in idx])
        part: dict[str, Any] = {
            "n": len(idx),
            "refusal_rate": head["refusal_rate"],
            "refusal_ci": head["refusal_ci"],
            "refusals": head["refusals"],
            "n_parsed": head["n_parsed"],
            "judges": {j.name: _rates([verdicts[j.name][k].label for k in idx]) for j in judges},
        }
        if gf.types:
            types: dict[str, list[int]] = defaultdict(list)
            for k in idx:
                types[gf.types[k] or "unknown"].append(k)
            part["by_type"] = {
                t: {"n": len(ks), **_rates([verdicts[primary][k].label for k in ks])}
                for t, ks in sorted(types.items())
            }
        out[kind] = part
    return out


def compare_runs(
    rows: Sequence[dict[str, Any]], run_a: str, run_b: str, judge: str | None = None
) -> list[dict[str, Any]]:
    """Exact McNemar test of two runs' refusals per eval file, on the documents both have
    (matched by id): for any two runs, e.g. two seeds or two defense methods."""
    if run_a == run_b:
        raise UserError(f"--run_a and --run_b are both {run_a!r}: compare two different runs")
    by: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    runs = {r["run"] for r in rows}
    for run in (run_a, run_b):
        if run not in runs:
            raise UserError(f"run {run!r} is not in the scores (runs: {', '.join(sorted(runs))})")
    for r in rows:
        if r["run"] not in (run_a, run_b):
            continue
        name = judge or next(iter(r["judges"]))
        if name not in r["judges"]:
            raise UserError(f"judge {name!r} did not score run {r['run']!r}")
        by[(r["run"], r["eval_stem"])][r["id"]] = r["judges"][name]["label"]
    out = []
    stems = sorted({stem for run, stem in by if run == run_a} & {s for r, s in by if r == run_b})
    for stem in stems:
        a, b = by[(run_a, stem)], by[(run_b, stem)]
        ids = paired_ids(a, b)
        test = paired_refusals(a, b)
        out.append(
            {
                "eval_stem": stem,
                "rate_a": sum(a[i] == REFUSAL for i in ids) / len(ids) if ids else None,
                "rate_b": sum(b[i] == REFUSAL for i in ids) / len(ids) if ids else None,
                **test,
            }
        )
    if not out:
        raise UserError(f"runs {run_a!r} and {run_b!r} share no eval file")
    return out


# ----------------------------------------------------------------------------- outputs


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def format_result_line(r: dict[str, Any]) -> str:
    """One terminal line per scored file: every judge's refusal rate (Wilson interval)."""
    parts = []
    for name, j in r["judges"].items():
        ci = j.get("refusal_ci")
        rng = f" [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]" if ci else ""
        unparsed = f", {j['n_unparsed']} unparsed" if j.get("n_unparsed") else ""
        parts.append(f"{name}={_pct(j['refusal_rate'])}{rng}{unparsed}")
    p = r.get("vs_base_p")
    test = f" vs base p={p:.3g}" if p is not None else ""
    util = f" {r['utility_metric']}={r['utility']:.3g}" if r.get("utility") is not None else ""
    kinds = ""
    if len(r.get("by_kind") or {}) > 1:
        kinds = (
            " ("
            + ", ".join(
                f"{kind} {_pct(part['refusal_rate'])} of {part['n']}"
                for kind, part in r["by_kind"].items()
            )
            + f", {r['judge']})"
        )
    return f"{r['run']}/{r['eval_stem']}: n={r['n']} refusal {' '.join(parts)}{test}{util}{kinds}"


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
) -> dict[str, Any]:
    """Write both files atomically (the summary last, so its presence means both are complete)."""
    summary = {
        "schema_version": SCHEMA_VERSION,
        "scoring": run_metadata(flags),
        "primary_judge": judges[0].name,
        "judges": [j.config() for j in judges],
        "intervals": {"method": "wilson", "confidence": CONFIDENCE},
        "paired_test": "exact McNemar (refusal vs not) of each adapter run against the base "
        "model's run on the same documents; see results[].vs_base",
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


def warn_live_writers(files: Sequence[GenerationFile]) -> None:
    """A run folder that a generation run is still writing may gain or change files after it
    is scored: say so (its finished files are complete, each written atomically)."""
    from crossdefense.io import live_writer

    for folder in sorted({gf.path.parent for gf in files}):
        holder = live_writer(folder)
        if holder:
            log.warning(
                "%s: a generation run is still writing here (pid %s on %s); files it has not "
                "finished are not scored, and finished ones may be redone",
                folder,
                holder.get("pid"),
                holder.get("host"),
            )


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
    judge: str | Sequence[str] | None = None,
    *,
    references_path: str | None = None,
    harm_model: str | None = None,
    judge_model: str | Sequence[str] | None = None,
    device: str | None = None,
    batch_size: int | None = None,
    overwrite: bool = False,
    flags: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Load, judge, measure and write scores.jsonl + summary.json; returns the summary rows."""
    from crossdefense.judges import make_judge, normalize_judge_names

    names = normalize_judge_names(judge)
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise UserError(f"--batch_size must be an integer >= 1, not {batch_size!r}")
    scores_path, summary_path = check_output_dir(output_dir, overwrite)
    files = [load_generation(p) for p in expand_generation_paths(input_path, Path(output_dir))]
    check_unique(files)
    warn_live_writers(files)
    if references_path is not None:
        attach_references(files, load_references(references_path), references_path)
    models = parse_judge_models(judge_model, names)
    if harm_model:
        models.setdefault("harmfulness", harm_model)
    judges = []
    for name in names:
        kwargs: dict[str, Any] = {}
        if name in MODEL_JUDGES and device:
            kwargs["device"] = device
        if name in MODEL_JUDGES and batch_size:
            kwargs["batch_size"] = int(batch_size)
        if name in models:
            kwargs["model"] = models[name]
        judges.append(make_judge(name, **kwargs))
    with output_lock(Path(output_dir), "scoring"):
        check_output_dir(output_dir, overwrite)  # again: another run may have finished meanwhile
        rows, results = score_files(files, judges)
        write_scores(scores_path, summary_path, rows, results, judges, flags or {})
    return results


# judges that load a model (they take device / batch size / a model path or hub id)
MODEL_JUDGES = (
    "embedding",
    "learned",
    "harmfulness",
    "wildguard",
    "llamaguard",
    "harmbench",
    "llm",
)
_TAKE_MODEL = ("harmfulness", "wildguard", "llamaguard", "harmbench", "llm")


def parse_judge_models(spec: str | Sequence[str] | None, names: Sequence[str]) -> dict[str, str]:
    """`--judge_model wildguard=/models/wildguard,llm=HuggingFaceTB/SmolLM2-1.7B-Instruct`:
    a hub id or a local folder per model judge; each named judge must be selected too."""
    if spec is None:
        return {}
    from crossdefense.cli import as_list

    out: dict[str, str] = {}
    for item in as_list(spec):
        name, eq, model = item.partition("=")
        name, model = name.strip(), model.strip()
        if not eq or not name or not model:
            raise UserError(f"--judge_model: {item!r} is not judge=model_dir_or_hub_id")
        if name not in _TAKE_MODEL:
            raise UserError(
                f"--judge_model: {name!r} takes no model; model judges: {', '.join(_TAKE_MODEL)}"
            )
        if name not in names:
            raise UserError(f"--judge_model: {name!r} is not among the judges (--judge)")
        if name in out:
            raise UserError(f"--judge_model: {name!r} is given twice")
        out[name] = model
    return out
