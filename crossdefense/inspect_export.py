"""Export scored samples as UK AISI Inspect eval logs, one per (run x eval file), so that every
response can be read with its document, its judges' verdicts and its metrics in `inspect view`.

The input is the output directory of `scripts/score_answers.py` (`summary.json` and
`scores.jsonl`). The document and instruction of each record come from the generation file
that `summary.json` names; when that file is missing (moved, deleted) the log is still written,
with a warning, and each sample says that its document is unavailable (or, with
`require_generation`, the export stops with a UserError).

Logs use Inspect's default `.eval` format: the viewer lists `.eval` files under any name,
while `.json` logs are only listed when their name starts with a timestamp. Logs are written
into a temporary folder inside the output folder and moved into place only when all of them
are complete, so a failure leaves no half-written log.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import (
    check_not_generation_folder,
    output_lock,
    path_component,
    read_json,
    read_jsonl,
    sha256_file,
    write_json,
)
from crossdefense.paths import REPO_ROOT
from crossdefense.scoring import ROW_FIELDS, SCORES_FILE, SUMMARY_FILE
from crossdefense.tasks import split_prompt

log = logging.getLogger(__name__)

LOG_SUFFIX = ".eval"
NAME_SEPARATOR = "__"
# how the instruction and a record's input are joined in the sample's user message
# (the chat template's default `input_separator`, see configs/chat.json)
INPUT_SEPARATOR = "\n\n"
# scores.jsonl keys that have a place of their own in a sample; any other key of a row
# (e.g. `kind`, `type` of XSTest records) is copied into the sample's metadata as it is
ROW_KEYS = ROW_FIELDS
# the logs an export wrote into its folder, so the next one can tell stale logs from its own
EXPORT_INDEX = "exported.json"
# summary.json result keys copied into the log's metadata under "summary"
SUMMARY_KEYS = (
    "n",
    "n_with_reference",
    "judge",
    "refusal_rate",
    "refusal_ci",
    "refusals",
    "n_parsed",
    "partial_rate",
    "processed_rate",
    "agreement",
    "metrics",
    "metric_counts",
    "utility_metric",
    "utility",
    "vs_base",
    "vs_base_p",
    "inferred_from",
)
RUN_FACTS = ("train_task", "num_defense", "num_safety", "seed")


@dataclass
class ExportedLog:
    """One log written: where, for which run and eval file, how many samples, and whether
    the generation file (documents, instructions, references) was found."""

    path: Path
    run: str
    eval_stem: str
    samples: int
    generation_file: Path | None

    def line(self) -> str:
        missing = "" if self.generation_file else " (generation file not found: no documents)"
        return f"wrote {self.path} ({self.samples} samples){missing}"


# ----------------------------------------------------------------------------- reading


def read_scores_dir(input_path: str | Path) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """(folder, summary, rows) of a scores folder; `summary.json` or `scores.jsonl` itself
    names its folder too. Every problem is a UserError naming the file."""
    path = Path(input_path).expanduser()
    if path.is_file() and path.name in (SCORES_FILE, SUMMARY_FILE):
        path = path.parent
    if not path.exists():
        raise UserError(f"--input_path {path}: no such directory")
    if not path.is_dir():
        raise UserError(f"--input_path {path}: not a directory (give the scores folder)")
    for name in (SUMMARY_FILE, SCORES_FILE):
        if not (path / name).is_file():
            raise UserError(f"{path}: no {name}; give the --output_dir of scripts/score_answers.py")
    summary = read_json(path / SUMMARY_FILE)
    results = summary.get("results") if isinstance(summary, dict) else None
    if not isinstance(results, list) or not all(
        isinstance(r, dict) and isinstance(r.get("run"), str | int) and r.get("eval_stem")
        for r in results
    ):
        raise UserError(f"{path / SUMMARY_FILE}: no 'results' list of runs and eval files")
    rows = read_jsonl(path / SCORES_FILE)
    for lineno, row in enumerate(rows, 1):
        if not isinstance(row, dict) or any(k not in row for k in ("run", "eval_stem", "id")):
            raise UserError(f"{path / SCORES_FILE}: line {lineno} is not a scored record")
        if not isinstance(row.get("judges"), dict):
            raise UserError(f"{path / SCORES_FILE}: line {lineno} has no 'judges' object")
    return path, summary, rows


@dataclass
class Generation:
    """What a generation file says about each record, by id."""

    path: Path
    parameters: dict[str, Any]
    metadata: dict[str, Any]
    records: dict[str, dict[str, Any]]  # id -> instruction, input, reference, output
    tokens: dict[str, dict[str, Any]]  # id -> prompt_tokens, new_tokens, ... (from .jsonl)


def find_generation(
    result: dict[str, Any], generation_dir: str | Path | None = None
) -> Path | None:
    """The generation file of a summary result: `<generation_dir>/<run>/<eval_stem>.json`
    when given, else the recorded path (a relative one is tried from the current folder,
    then from the repository), or None."""
    candidates = []
    if generation_dir is not None:
        candidates.append(Path(generation_dir) / str(result["run"]) / f"{result['eval_stem']}.json")
    recorded = result.get("generation_file")
    if isinstance(recorded, str) and recorded:
        p = Path(recorded).expanduser()
        candidates.append(p)
        if not p.is_absolute():
            candidates.append(REPO_ROOT / p)
    return next((p for p in candidates if p.is_file()), None)


def _list(data: dict, key: str, path: Path, n: int, allow_none: bool = False) -> list:
    value = data.get(key)
    if not isinstance(value, list) or len(value) != n:
        raise UserError(f"{path}: '{key}' is not a list of {n} entries (one per output)")
    for i, v in enumerate(value):
        if not (isinstance(v, str) or (allow_none and v is None)):
            raise UserError(f"{path}: {key}[{i}] is {type(v).__name__}, not a string")
    return value


def load_generation_records(path: Path) -> Generation:
    """The records of a generation file in upstream's shape (see generation.final_document),
    keyed by id (position when it has no ids, as scoring numbers them), with the token counts
    of its resumable `.jsonl` log when that lies beside it."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("outputs"), list):
        raise UserError(f"{path}: no 'outputs' list: not a generation output file")
    n = len(data["outputs"])
    outputs = _list(data, "outputs", path, n)
    instructions = _list(data, "instructions", path, n)
    inputs = _list(data, "inputs", path, n) if data.get("inputs") else [""] * n
    ids = [str(i) for i in data["ids"]] if isinstance(data.get("ids"), list) else None
    if ids is None or len(ids) != n:
        ids = [str(i) for i in range(n)]
    references = (
        _list(data, "references", path, n, allow_none=True)
        if data.get("references") is not None
        else [None] * n
    )
    records = {
        rid: {"instruction": ins, "input": inp, "reference": ref, "output": out}
        for rid, ins, inp, ref, out in zip(
            ids, instructions, inputs, references, outputs, strict=True
        )
    }
    parameters = data.get("parameters") if isinstance(data.get("parameters"), dict) else {}
    metadata = data.get("metadata") if isinstance(data.get("metadata"), dict) else {}
    return Generation(
        path, parameters, metadata, records, _token_counts(path.with_suffix(".jsonl"))
    )


def _token_counts(jsonl: Path) -> dict[str, dict[str, Any]]:
    """id -> {output, prompt_tokens, new_tokens, document_tokens_cut} from generation's
    resumable log (the last row per id wins); unreadable lines are skipped, since the counts
    are only shown, never needed."""
    if not jsonl.is_file():
        return {}
    out: dict[str, dict[str, Any]] = {}
    try:
        with jsonl.open(encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and "id" in row:
                    out[str(row["id"])] = row
    except (OSError, UnicodeDecodeError):
        return {}
    return out


# ----------------------------------------------------------------------------- prompts


class PromptRenderer:
    """The prompt text a generation run gave its model, rebuilt from the template that its
    `parameters` name (the adapter's stored template when it has the same name, else
    configs/<name>.json). Chat templates need the base model's tokenizer, loaded only from a
    local folder. When nothing can be rebuilt, `render` returns None."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._cache: dict[tuple, Any] = {}

    def prompter(self, parameters: dict[str, Any]):
        name = parameters.get("prompt_template")
        if not self.enabled or not isinstance(name, str) or not name:
            return None
        model, lora = parameters.get("model"), parameters.get("lora_weights")
        key = (name, str(lora), str(model))
        if key not in self._cache:
            self._cache[key] = self._load(name, lora, model)
        return self._cache[key]

    @staticmethod
    def _load(name: str, lora: Any, model: Any):
        from crossdefense.prompts import load_prompter, stored_prompter

        prompter = None
        try:
            if isinstance(lora, str) and lora and Path(lora).is_dir():
                stored = stored_prompter(lora)
                prompter = stored if stored is not None and stored.name == name else None
            prompter = prompter or load_prompter(name)
        except UserError as e:
            log.warning("prompt template %r cannot be loaded (%s): no rendered prompts", name, e)
            return None
        if prompter.is_chat:
            if not (isinstance(model, str) and Path(model).is_dir()):
                log.warning(
                    "template %r is the tokenizer's chat template and the base model %s is no "
                    "local folder: no rendered prompts",
                    name,
                    model,
                )
                return None
            try:
                from transformers import AutoTokenizer

                prompter.tokenizer = AutoTokenizer.from_pretrained(model, local_files_only=True)
            except Exception as e:  # noqa: BLE001 - any failure only drops the rendered prompt
                log.warning("%s: tokenizer not loaded (%s): no rendered prompts", model, e)
                return None
        return prompter

    def render(self, parameters: dict[str, Any], instruction: str, input: str) -> str | None:
        prompter = self.prompter(parameters)
        if prompter is None:
            return None
        try:
            return prompter.build(instruction, input)
        except Exception:  # noqa: BLE001 - a template that fails on one record: leave it out
            return None


# ----------------------------------------------------------------------------- building


def log_name(run: str, eval_stem: str) -> str:
    """`<run>__<eval_stem>.eval`, checked to be one safe file name."""
    path_component(run, "run name")
    path_component(eval_stem, "eval file stem")
    return path_component(f"{run}{NAME_SEPARATOR}{eval_stem}{LOG_SUFFIX}", "log file name")


def _stable_id(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:22]


def _iso(value: Any) -> str | None:
    """An ISO date with a time zone (UTC assumed where none is given), or None."""
    if not isinstance(value, str):
        return None
    try:
        when = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.UTC)
    return when.isoformat()


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and x == x  # not NaN


def _explanation(verdict: dict[str, Any]) -> str:
    score = verdict.get("score")
    parts = [f"label: {verdict.get('label')}", f"score: {score:.4g}" if _number(score) else ""]
    if verdict.get("evidence"):
        parts.append("evidence: " + ", ".join(repr(e) for e in verdict["evidence"]))
    return "; ".join(p for p in parts if p)


def sample_scores(row: dict[str, Any], answer: str | None = None) -> dict[str, Any]:
    """One Inspect Score per judge: the value is the judge's label (`refusal`, `comply`,
    `partial`, `unparsed`, ...), which the viewer shows as is; the numeric score, the label,
    the evidence and any extra outputs are in its metadata and explanation; `answer` is the
    response judged (the viewer's scoring tab shows it beside each verdict)."""
    from inspect_ai.scorer import Score

    scores = {}
    for name, verdict in row["judges"].items():
        verdict = verdict if isinstance(verdict, dict) else {"label": str(verdict)}
        label = verdict.get("label")
        scores[str(name)] = Score(
            value=str(label) if label is not None else "none",
            answer=answer,
            explanation=_explanation(verdict),
            metadata={
                "label": label,
                "score": verdict.get("score"),
                **{k: v for k, v in verdict.items() if k not in ("label", "score")},
            },
        )
    return scores


def _user_text(record: dict[str, Any] | None, gen_path: Path | None) -> str:
    if record is None:
        where = gen_path if gen_path else "the generation file"
        return f"[document unavailable: {where} has no record of this id]"
    text = record["instruction"]
    return text + (INPUT_SEPARATOR + record["input"] if record["input"] else "")


def build_sample(
    row: dict[str, Any],
    model: str,
    generation: Generation | None,
    renderer: PromptRenderer,
    lineage: dict[str, Any],
    missing_note: str,
    max_new_tokens: int | None,
):
    """The EvalSample of one scored record."""
    from inspect_ai.log import EvalSample
    from inspect_ai.model import (
        ChatMessageAssistant,
        ChatMessageUser,
        ModelOutput,
        ModelUsage,
    )

    rid = str(row["id"])
    record = generation.records.get(rid) if generation is not None else None
    output = row.get("output")
    if not isinstance(output, str):
        output = record["output"] if record is not None else ""
    if generation is None:
        user = ChatMessageUser(content=missing_note)
    else:
        user = ChatMessageUser(content=_user_text(record, generation.path))
    assistant = ChatMessageAssistant(content=output, model=model, source="generate")

    tokens = generation.tokens.get(rid, {}) if generation is not None else {}
    if tokens.get("output") != output:
        tokens = {}  # a later regeneration: its counts belong to another answer
    stop = "unknown"
    if _number(tokens.get("new_tokens")) and max_new_tokens:
        stop = "max_tokens" if tokens["new_tokens"] >= max_new_tokens else "stop"
    out = ModelOutput.from_content(model, output, stop_reason=stop)
    if _number(tokens.get("prompt_tokens")) and _number(tokens.get("new_tokens")):
        out.usage = ModelUsage(
            input_tokens=int(tokens["prompt_tokens"]),
            output_tokens=int(tokens["new_tokens"]),
            total_tokens=int(tokens["prompt_tokens"]) + int(tokens["new_tokens"]),
        )

    metadata: dict[str, Any] = {
        "id": rid,
        "run": row["run"],
        "eval_stem": row["eval_stem"],
        "eval_task": row.get("eval_task"),
        "doc_kind": row.get("doc_kind"),
        "model": model,
        "refusal_label": row.get("refusal_label"),
        "metrics": row.get("metrics") or {},
        **lineage,
    }
    if record is not None:
        document, suffix = split_prompt(record["instruction"])
        metadata["instruction"] = suffix.strip() if document else record["instruction"]
        metadata["document_chars"] = len(document or record["input"])
        if record["input"]:
            metadata["input"] = record["input"]
        if record["output"] != output:
            metadata["generation_output"] = record["output"]
        rendered = renderer.render(generation.parameters, record["instruction"], record["input"])
        if rendered is not None:
            metadata["rendered_prompt"] = rendered
    for key in ("document_tokens_cut", "prompt_tokens", "new_tokens"):
        if key in tokens:
            metadata[key] = tokens[key]
    for key, value in row.items():  # anything else scoring wrote (kind, type, ...)
        if key not in ROW_KEYS:
            metadata[key if key not in metadata else f"row_{key}"] = value
    reference = record.get("reference") if record is not None else None
    return EvalSample(
        id=rid,
        epoch=1,
        input=[user],
        target=reference if isinstance(reference, str) else "",
        messages=[user, assistant],
        output=out,
        scores=sample_scores(row, output),
        metadata=metadata,
    )


def _judge_score(name: str, rates: dict[str, Any]):
    """The EvalScore of one judge: its rates (and Wilson interval bounds) as metrics."""
    from inspect_ai.log import EvalMetric, EvalScore

    metrics = {}
    for key in ("refusal_rate", "partial_rate", "comply_rate", "mean_score"):
        if _number(rates.get(key)):
            metrics[key] = EvalMetric(name=key, value=rates[key])
    for key in ("refusal_ci", "partial_ci"):
        ci = rates.get(key)
        if isinstance(ci, list | tuple) and len(ci) == 2 and all(_number(x) for x in ci):
            base = key.removesuffix("_ci")
            for bound, value in zip(("low", "high"), ci, strict=True):
                metrics[f"{base}_ci_{bound}"] = EvalMetric(name=f"{base}_ci_{bound}", value=value)
    return EvalScore(
        name=name,
        scorer=name,
        scored_samples=rates.get("n_parsed"),
        unscored_samples=rates.get("n_unparsed"),
        metrics=metrics,
        metadata={k: rates[k] for k in ("kind", "refusals") if k in rates},
    )


def build_log(
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    summary: dict[str, Any],
    generation: Generation | None,
    renderer: PromptRenderer,
):
    """The EvalLog of one run x eval file: status success, one sample per scored record,
    the judges' rates as results."""
    from inspect_ai.log import (
        EvalConfig,
        EvalDataset,
        EvalLog,
        EvalPlan,
        EvalPlanStep,
        EvalResults,
        EvalSpec,
        EvalStats,
        HeadlineMetric,
    )
    from inspect_ai.model import GenerateConfig

    run, stem = str(result["run"]), str(result["eval_stem"])
    meta = generation.metadata if generation is not None else {}
    params = generation.parameters if generation is not None else {}
    model = str(result.get("model") or meta.get("model_name") or "unknown")
    decoding = meta.get("generation") if isinstance(meta.get("generation"), dict) else {}
    train = meta.get("train") if isinstance(meta.get("train"), dict) else None
    lineage = {
        "base_model": params.get("model"),
        "lora_weights": params.get("lora_weights"),
        **{k: result.get(k) for k in RUN_FACTS},
        "train_data_sha256": train.get("sha256") if train else None,
        "config_fingerprint": meta.get("config_fingerprint"),
    }
    if "adapter_sha256" in meta:
        lineage["adapter_sha256"] = meta["adapter_sha256"]
    recorded = result.get("generation_file")
    missing_note = f"[document unavailable: generation file {recorded} not found]"
    max_new = decoding.get("max_new_tokens") if _number(decoding.get("max_new_tokens")) else None
    samples = [
        build_sample(row, model, generation, renderer, lineage, missing_note, max_new)
        for row in rows
    ]

    config = {
        "max_tokens": decoding.get("max_new_tokens"),
        "temperature": decoding.get("temperature"),
        "top_p": decoding.get("top_p"),
        "top_k": decoding.get("top_k"),
        "seed": decoding.get("seed"),
    }
    generate_config = GenerateConfig(**{k: v for k, v in config.items() if _number(v)})
    scoring = summary.get("scoring") if isinstance(summary.get("scoring"), dict) else {}
    created = _iso(meta.get("date")) or _iso(scoring.get("date"))
    created = created or _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    judges_config = {
        j["name"]: j for j in summary.get("judges", []) if isinstance(j, dict) and "name" in j
    }
    judge_rates = result.get("judges") if isinstance(result.get("judges"), dict) else {}
    primary = str(
        result.get("judge") or summary.get("primary_judge") or next(iter(judge_rates), "")
    )
    headline = HeadlineMetric(scorer=primary, metric="refusal_rate") if primary else None
    versions = meta.get("versions") if isinstance(meta.get("versions"), dict) else {}

    spec = EvalSpec(
        eval_id=_stable_id("eval", run, stem, str(scoring.get("date"))),
        run_id=_stable_id("run", run),
        created=created,
        task=stem,
        task_id=_stable_id("task", run, stem),
        task_description=f"{result.get('eval_task')} on {result.get('doc_kind')} documents, "
        f"run {run}",
        task_args={
            "run": run,
            "eval_task": result.get("eval_task"),
            "doc_kind": result.get("doc_kind"),
            **{k: result.get(k) for k in RUN_FACTS},
        },
        tags=[t for t in (run, result.get("doc_kind"), result.get("eval_task")) if t],
        dataset=EvalDataset(
            name=stem,
            location=meta.get("eval_file"),
            samples=len(samples),
            sample_ids=[s.id for s in samples],
        ),
        model=model,
        model_generate_config=generate_config,
        model_args={
            k: params[k] for k in ("model", "lora_weights", "prompt_template") if k in params
        },
        config=EvalConfig(),
        packages={str(k): str(v) for k, v in versions.items()},
        metadata={
            "run": run,
            "eval_stem": stem,
            "eval_task": result.get("eval_task"),
            "doc_kind": result.get("doc_kind"),
            "model": model,
            **lineage,
            "generation_file": str(generation.path) if generation else recorded,
            "generation_file_found": generation is not None,
            "parameters": params,
            "generation": meta,
            "summary": {k: result[k] for k in SUMMARY_KEYS if k in result},
            "scoring": scoring,
            "intervals": summary.get("intervals"),
        },
        # EvalScorer is not exported by inspect_ai.log: pydantic builds it from the dicts
        scorers=[{"name": name, "options": judges_config.get(name)} for name in judge_rates],
        headline_metric=headline,
    )
    results = EvalResults(
        total_samples=len(samples),
        completed_samples=len(samples),
        scores=[_judge_score(name, rates) for name, rates in judge_rates.items()],
        headline=headline,
        metadata={k: result.get(k) for k in ("utility_metric", "utility", "metrics", "vs_base_p")},
    )
    plan = EvalPlan(
        steps=[EvalPlanStep(solver="crossdefense.generation", params=decoding)],
        config=generate_config,
    )
    usage = [s.output.usage for s in samples if s.output.usage is not None]
    model_usage = {}
    if usage:
        from inspect_ai.model import ModelUsage

        model_usage[model] = ModelUsage(
            input_tokens=sum(u.input_tokens for u in usage),
            output_tokens=sum(u.output_tokens for u in usage),
            total_tokens=sum(u.total_tokens for u in usage),
        )
    # generation records when it finished, not how long it ran: no duration is claimed
    stats = EvalStats(started_at=created, completed_at=created, model_usage=model_usage)
    return EvalLog(
        status="success",
        eval=spec,
        plan=plan,
        results=results,
        stats=stats,
        samples=samples,
    )


# ----------------------------------------------------------------------------- export


def _group_rows(
    summary: dict[str, Any], rows: list[dict[str, Any]], where: Path
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """(summary result, its rows in file order) per run x eval file; rows and results must
    name the same files (scoring writes them together)."""
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        by_key[(str(row["run"]), str(row["eval_stem"]))].append(row)
    groups, seen = [], set()
    for result in summary["results"]:
        key = (str(result["run"]), str(result["eval_stem"]))
        if key in seen:
            raise UserError(f"{where / SUMMARY_FILE}: {key[0]}/{key[1]} occurs more than once")
        seen.add(key)
        if not by_key.get(key):
            raise UserError(
                f"{where}: {SCORES_FILE} has no records of {key[0]}/{key[1]} named in "
                f"{SUMMARY_FILE}; re-run scripts/score_answers.py"
            )
        if isinstance(result.get("n"), int) and result["n"] != len(by_key[key]):
            log.warning(
                "%s/%s: %s says %d records, %s has %d",
                *key,
                SUMMARY_FILE,
                result["n"],
                SCORES_FILE,
                len(by_key[key]),
            )
        groups.append((result, by_key[key]))
    extra = sorted(set(by_key) - seen)
    if extra:
        raise UserError(
            f"{where}: {SCORES_FILE} has records of {extra[0][0]}/{extra[0][1]} that "
            f"{SUMMARY_FILE} does not name; re-run scripts/score_answers.py"
        )
    return groups


def _check_unchanged(result: dict[str, Any], gen_path: Path) -> None:
    """A generation file edited or regenerated after scoring would pair its documents with
    the old scores: refused (summaries from before the hash was recorded are checked record by
    record in `_check_generation` instead)."""
    scored = result.get("generation_sha256")
    if scored and sha256_file(gen_path) != scored:
        raise UserError(
            f"{gen_path}: changed since {result['run']}/{result['eval_stem']} was scored "
            "(sha256 differs); re-run scripts/score_answers.py before exporting"
        )


def _check_generation(gen: Generation, rows: list[dict[str, Any]]) -> None:
    unknown = sum(str(r["id"]) not in gen.records for r in rows)
    if unknown:
        log.warning(
            "%s: %d scored ids are not in the file (changed since scoring?); their samples "
            "have no document",
            gen.path,
            unknown,
        )
    changed = sum(
        str(r["id"]) in gen.records and gen.records[str(r["id"])]["output"] != r.get("output")
        for r in rows
    )
    if changed:
        log.warning(
            "%s: %d outputs differ from the scored ones (regenerated since scoring?); the "
            "samples show the scored output",
            gen.path,
            changed,
        )


def export_inspect(
    input_path: str | Path,
    output_dir: str | Path,
    overwrite: bool = False,
    generation_dir: str | Path | None = None,
    require_generation: bool = False,
    render_prompts: bool = True,
    progress: bool = True,
) -> list[ExportedLog]:
    """Write one Inspect `.eval` log per run x eval file of a scores folder into `output_dir`;
    returns what was written, in summary.json's order."""
    try:
        import inspect_ai.log  # noqa: F401
    except ImportError:
        raise UserError("inspect_ai is not installed: pip install inspect-ai") from None
    from pydantic import ValidationError
    from tqdm.auto import tqdm

    check_not_generation_folder(Path(output_dir).expanduser())
    in_dir, summary, rows = read_scores_dir(input_path)
    out = Path(output_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"--output_dir {out}: exists and is not a directory")
    if generation_dir is not None and not Path(generation_dir).is_dir():
        raise UserError(f"--generation_dir {generation_dir}: no such directory")
    groups = _group_rows(summary, rows, in_dir)
    names: dict[str, tuple[str, str]] = {}
    for result, _ in groups:
        key = (str(result["run"]), str(result["eval_stem"]))
        name = log_name(*key)
        if name in names:
            raise UserError(
                f"{key[0]}/{key[1]} and {names[name][0]}/{names[name][1]} would both be "
                f"written to {name}"
            )
        names[name] = key

    def earlier_logs() -> list[str]:
        """Logs an earlier export into this folder wrote that this one will not rewrite."""
        index = out / EXPORT_INDEX
        try:
            listed = read_json(index).get("logs", []) if index.is_file() else []
        except UserError:
            listed = []
        return [n for n in listed if isinstance(n, str) and n not in names and (out / n).exists()]

    def check_targets() -> None:
        stale = earlier_logs()
        if stale and not overwrite:
            raise UserError(
                f"{out}: holds {len(stale)} log(s) of an earlier export (e.g. {stale[0]}) that "
                "this one would leave beside its own; pass --overwrite to replace them"
            )
        for name in names:
            target = out / name
            if target.is_dir() and not target.is_symlink():
                raise UserError(f"{target}: is a directory")
            if (target.exists() or target.is_symlink()) and not overwrite:
                raise UserError(f"{target}: exists; pass --overwrite to replace it")

    check_targets()
    runs: dict[str, list[tuple[dict[str, Any], list[dict[str, Any]]]]] = defaultdict(list)
    for result, group in groups:
        runs[str(result["run"])].append((result, group))
    renderer = PromptRenderer(render_prompts)
    exported: list[ExportedLog] = []
    with output_lock(out, "Inspect export"):
        check_targets()  # again: another export may have finished meanwhile
        tmp = Path(tempfile.mkdtemp(prefix=".inspect-export-", dir=out))
        try:
            for run, files in tqdm(
                runs.items(), desc="exporting", unit="run", disable=not progress
            ):
                for result, group in files:
                    stem = str(result["eval_stem"])
                    gen_path = find_generation(result, generation_dir)
                    generation = None
                    if gen_path is None:
                        recorded = result.get("generation_file")
                        if require_generation:
                            raise UserError(
                                f"{run}/{stem}: generation file {recorded} not found "
                                "(pass --generation_dir if the generations moved)"
                            )
                        log.warning(
                            "%s/%s: generation file %s not found; its samples show the scored "
                            "output without document or reference",
                            run,
                            stem,
                            recorded,
                        )
                    else:
                        _check_unchanged(result, gen_path)
                        generation = load_generation_records(gen_path)
                        _check_generation(generation, group)
                    try:
                        eval_log = build_log(result, group, summary, generation, renderer)
                    except ValidationError as e:
                        first = str(e).splitlines()[0]
                        raise UserError(
                            f"{run}/{stem}: cannot build an Inspect log: {first}"
                        ) from None
                    name = log_name(run, stem)
                    from inspect_ai.log import write_eval_log

                    write_eval_log(eval_log, str(tmp / name), format="eval")
                    exported.append(ExportedLog(out / name, run, stem, len(group), gen_path))
            check_targets()
            stale = earlier_logs()
            for item in exported:
                os.replace(tmp / item.path.name, item.path)
            for name in stale:  # an earlier export's logs this one does not remake
                (out / name).unlink(missing_ok=True)
            write_json(out / EXPORT_INDEX, {"logs": sorted(names), "scores": str(in_dir)})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return exported
