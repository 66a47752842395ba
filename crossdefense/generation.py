"""Batched, length-sorted, left-padded generation that decodes only new tokens, with a
per-record JSONL written as it goes (a re-run resumes) and the final JSON in upstream's shape."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError, stages
from crossdefense.data import Record, encode, read_eval_records
from crossdefense.io import (
    LOCK_FILE,
    append_jsonl,
    expand_paths,
    output_lock,
    path_component,
    read_json,
    run_metadata,
    sha256_file,
    write_json,
)
from crossdefense.prompts import Prompter
from crossdefense.runs import OutputPaths, output_paths, shard_suffix, short_model_name
from crossdefense.tasks import doc_kind, majority_task

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodingConfig:
    max_new_tokens: int = 256
    num_beams: int = 4
    do_sample: bool = False
    temperature: float = 0.1
    top_p: float = 0.75
    top_k: int = 40
    max_input_tokens: int = 2048
    seed: int = 42

    def __post_init__(self) -> None:
        """Range checks before any model loads (fire passes whatever was typed)."""

        def number(x: Any) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool)

        checks = (
            (
                isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1,
                "--max_new_tokens must be an integer >= 1",
            ),
            (
                isinstance(self.num_beams, int) and self.num_beams >= 1,
                "--num_beams must be an integer >= 1",
            ),
            (
                isinstance(self.max_input_tokens, int) and self.max_input_tokens >= 8,
                "--max_input_tokens must be an integer >= 8",
            ),
            (
                isinstance(self.do_sample, bool),
                "--do_sample is a switch (--do_sample or --nodo_sample)",
            ),
            (number(self.temperature) and self.temperature > 0, "--temperature must be > 0"),
            (number(self.top_p) and 0 < self.top_p <= 1, "--top_p must be in (0, 1]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "--top_k must be an integer >= 0"),
            (
                isinstance(self.seed, int) and not isinstance(self.seed, bool),
                "--seed must be an integer",
            ),
        )
        for ok, message in checks:
            if not ok:
                raise UserError(message)

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_new_tokens": self.max_new_tokens,
            "num_beams": self.num_beams,
            "do_sample": self.do_sample,
        }
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            # Explicit values stop a model's generation_config from switching sampling on.
            kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.do_sample:
            for key in ("temperature", "top_p", "top_k"):
                d.pop(key)
        return d


def expand_inputs(input_path: str | list[str] | tuple[str, ...]) -> list[Path]:
    """A file, a directory (its *.json and XSTest *.csv), a glob, or several of these."""
    return expand_paths(
        input_path,
        lambda d: sorted([*d.glob("*.json"), *d.glob("*.csv")]),
        "evaluation files (*.json, *.csv)",
    )


def eval_task(records: list[Record]) -> str | None:
    return majority_task([r.instruction for r in records], [r.input for r in records])


def shard(records: list[Record], num_shards: int, shard_index: int) -> list[Record]:
    """Every `num_shards`-th record starting at `shard_index` (balanced lengths across shards)."""
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard_index must be in [0, {num_shards}) with --num_shards >= 1")
    return records[shard_index::num_shards]


def record_hash(fingerprint: str, record: Record) -> str:
    """What produced one answer: the run's settings and the record's own prompt text. A record
    whose text changed since its answer was written gets a new hash, so it is regenerated."""
    blob = json.dumps([fingerprint, record.instruction, record.input], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_resume_log(jsonl: Path) -> list[dict]:
    """The rows of a resumable JSONL. A torn last line (a kill, a full disk) is dropped, with
    a warning, and cut from the file so that appends continue on a clean line; an unreadable
    line anywhere else is an error naming it."""
    if not jsonl.is_file():
        return []
    data = jsonl.read_bytes()
    lines = data.split(b"\n")
    complete, tail = lines[:-1], lines[-1]  # tail: text after the last newline
    rows, good_end = [], 0
    for lineno, line in enumerate(complete, 1):
        if line.strip():
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                if lineno == len(complete) and not tail.strip():
                    tail = line  # the last line, newline written but content torn
                    break
                raise UserError(
                    f"{jsonl}: line {lineno} is not valid JSON; fix or delete the file "
                    "(or pass --overwrite)"
                ) from None
            if not isinstance(row, dict) or "id" not in row:
                raise UserError(f"{jsonl}: line {lineno} is not a generation record")
            rows.append(row)
        good_end += len(line) + 1
    if tail.strip():
        log.warning(
            "%s: dropped a torn last line (%d bytes); it will be regenerated", jsonl, len(tail)
        )
        with open(jsonl, "r+b") as f:
            f.truncate(good_end)
    return rows


def load_done(
    jsonl: Path, fingerprint: str, records: list[Record], replace: bool = False
) -> dict[str, dict] | None:
    """Records already generated under the same settings for the same prompt text; rows for
    changed or vanished records are regenerated. Rows made with other settings are an error,
    or with `replace` (--overwrite) mean the whole file is to be discarded: None."""
    try:
        rows = read_resume_log(jsonl)
    except UserError:
        if replace:  # a corrupt progress file: --overwrite redoes it, as the error line says
            return None
        raise
    if any(row.get("config") != fingerprint for row in rows):
        if replace:
            return None
        raise UserError(
            f"{jsonl}: partial output made with other settings; pass --overwrite to redo it"
        )
    wanted = {r.id: record_hash(fingerprint, r) for r in records}
    done, stale = {}, set()
    for row in rows:
        rid = str(row["id"])
        if wanted.get(rid) == row.get("record_hash"):
            done[rid] = row
        else:
            stale.add(rid)
    stale -= set(done)
    if stale:
        log.warning(
            "%s: %d earlier answers belong to records that changed or left the eval file; "
            "they are regenerated, not reused",
            jsonl,
            len(stale),
        )
    return done


def _pad_left(batch: list[list[int]], pad_id: int):
    import torch

    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        if x:
            ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
    return ids, mask


def common_prefix_len(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def group_prompts(prompts: list[list[int]]) -> list[list[int]]:
    """Indices of prompts that share at least half of every member's tokens from the start.

    Upstream's prompts put the document first and the task instruction after it, so the same
    document under several tasks (and the same template header everywhere) is a shared prefix:
    each group's prefix is then computed once and its KV cache reused by every member.
    Lexicographic order puts such prompts next to each other.
    """
    groups: list[list[int]] = []
    shared = longest = 0
    for i in sorted(range(len(prompts)), key=lambda i: prompts[i]):
        if groups:
            n = min(shared, common_prefix_len(prompts[groups[-1][0]], prompts[i]))
            if 2 * n >= max(longest, len(prompts[i])):
                groups[-1].append(i)
                shared, longest = n, max(longest, len(prompts[i]))
                continue
        groups.append([i])
        shared = longest = len(prompts[i])
    return groups


def plan_batches(
    prompts: list[list[int]], batch_size: int, share_prefix: bool = True
) -> list[list[list[int]]]:
    """Batches of whole groups (a group larger than a batch is split), longest prompts first:
    prompts of similar length share a batch (little padding) and an out-of-memory error shows
    in the first batch. Without `share_prefix` every prompt is a group of its own."""
    if batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    groups = group_prompts(prompts) if share_prefix else [[i] for i in range(len(prompts))]
    chunks = [g[k : k + batch_size] for g in groups for k in range(0, len(g), batch_size)]
    chunks.sort(key=lambda g: -max(len(prompts[i]) for i in g))
    batches: list[list[list[int]]] = []
    size = 0
    for g in chunks:
        if batches and size + len(g) <= batch_size:
            batches[-1].append(g)
            size += len(g)
        else:
            batches.append([g])
            size = len(g)
    return batches


def _positions(mask):
    """Position ids as `generate` derives them from the attention mask (pads get 0)."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def _prefill(model, cache, ids, mask_so_far):
    """Run `ids` (new columns of a batch whose full mask is `mask_so_far`) into `cache`."""
    width = ids.shape[1]
    model(
        input_ids=ids,
        attention_mask=mask_so_far,
        position_ids=_positions(mask_so_far)[:, -width:],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )


@dataclass
class SharedLayout:
    """A batch laid out as [head | part | tail]: `head` is common to every prompt, `part[g]`
    is group g's shared remainder, `tail` each prompt's own suffix (at least one token)."""

    head: Any  # LongTensor [1, H]
    part_ids: Any  # LongTensor [groups, P], left-padded
    part_mask: Any
    tail_ids: Any  # LongTensor [prompts, T], left-padded
    tail_mask: Any
    owner: Any  # LongTensor [prompts]: each prompt's group

    def inputs(self):
        """The full prompts (input ids and attention mask) in this layout."""
        import torch

        rows = len(self.owner)
        head_mask = torch.ones_like(self.head)
        ids = torch.cat([self.head.expand(rows, -1), self.part_ids[self.owner], self.tail_ids], 1)
        mask = torch.cat(
            [head_mask.expand(rows, -1), self.part_mask[self.owner], self.tail_mask], 1
        )
        return ids, mask


def shared_layout(groups: list[list[list[int]]], pad_id: int) -> SharedLayout:
    import torch

    glen = []  # each group's shared length; every prompt keeps a token for generate
    for g in groups:
        n = min(len(p) - 1 for p in g)
        for p in g[1:]:
            n = min(n, common_prefix_len(g[0], p))
        glen.append(n)
    head = min(glen)
    for g in groups[1:]:
        head = min(head, common_prefix_len(groups[0][0], g[0]))
    part_ids, part_mask = _pad_left(
        [g[0][head:n] for g, n in zip(groups, glen, strict=True)], pad_id
    )
    tail_ids, tail_mask = _pad_left(
        [p[n:] for g, n in zip(groups, glen, strict=True) for p in g], pad_id
    )
    return SharedLayout(
        head=torch.tensor([groups[0][0][:head]], dtype=torch.long),
        part_ids=part_ids,
        part_mask=part_mask,
        tail_ids=tail_ids,
        tail_mask=tail_mask,
        owner=torch.tensor([gi for gi, g in enumerate(groups) for _ in g]),
    )


def prefix_cache(model, layout: SharedLayout, num_beams: int):
    """The KV cache of [head | part] for every prompt and beam: the head computed once, each
    group's part once, then copied (None when there is nothing to precompute)."""
    import torch
    from transformers import DynamicCache

    n_head, n_groups = layout.head.shape[1], layout.part_ids.shape[0]
    if n_head + layout.part_ids.shape[1] == 0:
        return None
    device = next(model.parameters()).device
    cache = DynamicCache(config=model.config)
    head_mask = torch.ones((n_groups, n_head), dtype=torch.long)
    with torch.inference_mode():
        if n_head:
            _prefill(model, cache, layout.head.to(device), head_mask[:1].to(device))
            cache.batch_select_indices(torch.zeros(n_groups, dtype=torch.long, device=device))
        if layout.part_ids.shape[1]:
            mask = torch.cat([head_mask, layout.part_mask], 1)
            _prefill(model, cache, layout.part_ids.to(device), mask.to(device))
    cache.batch_select_indices(layout.owner.repeat_interleave(num_beams).to(device))
    return cache


def generate_ids(
    model,
    tokenizer,
    groups: list[list[list[int]]],
    cfg: DecodingConfig,
    share_prefix: bool = True,
) -> list[list[list[int]]]:
    """New tokens only, one list per prompt (padding and end marker removed), grouped as given.

    With `share_prefix`, the batch's common head (template header) is computed once, each
    group's part (its document) once per group, and the KV cache is copied to every prompt and
    beam before `generate` continues with the suffixes. Each segment is left-padded inside
    itself; the attention mask hides the pads and positions count real tokens only, so every
    prompt sees exactly the tokens and positions it would see alone. Without it: one plain
    left-padded batch.
    """
    import torch

    cache = None
    if share_prefix:
        layout = shared_layout(groups, tokenizer.pad_token_id)
        ids, mask = layout.inputs()
        cache = prefix_cache(model, layout, cfg.num_beams)
    else:
        ids, mask = _pad_left([p for g in groups for p in g], tokenizer.pad_token_id)
    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            cache=cache,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **cfg.generate_kwargs(),
        )
    new = out[:, ids.shape[1] :].tolist()
    stop = {tokenizer.pad_token_id, tokenizer.eos_token_id}
    flat = []
    for row in new:
        cut = next((i for i, t in enumerate(row) if t in stop), len(row))
        flat.append(row[:cut])
    result, k = [], 0
    for g in groups:
        result.append(flat[k : k + len(g)])
        k += len(g)
    return result


def generate_records(
    model,
    tokenizer,
    prompter: Prompter,
    records: list[Record],
    cfg: DecodingConfig,
    batch_size: int,
    on_result=None,
    progress: bool = True,
    share_prefix: bool = True,
) -> list[dict]:
    """One output row per record, in input order; `on_result(index, row)` as each arrives.

    Records may come from several eval files: pooling them fills batches that one small file
    would leave half empty, and puts a document's prompts under all five tasks in one batch,
    where its prefix is computed once (see `generate_ids`).
    """
    import torch
    from tqdm.auto import tqdm

    encoded = [encode(tokenizer, prompter, r, cfg.max_input_tokens) for r in records]
    prompts = [e.input_ids for e in encoded]
    batches = plan_batches(prompts, batch_size, share_prefix)
    results: list[dict] = [{} for _ in records]
    bar = tqdm(total=len(records), desc="generating", unit="prompt", disable=not progress)
    for b, batch in enumerate(batches):
        if cfg.do_sample:
            torch.manual_seed(cfg.seed + b)
        outs = generate_ids(
            model, tokenizer, [[prompts[i] for i in g] for g in batch], cfg, share_prefix
        )
        for g, group_out in zip(batch, outs, strict=True):
            for i, new_ids in zip(g, group_out, strict=True):
                row = {
                    "id": records[i].id,
                    "output": tokenizer.decode(new_ids, skip_special_tokens=True).strip(),
                    "prompt_tokens": len(prompts[i]),
                    "new_tokens": len(new_ids),
                    "document_tokens_cut": encoded[i].doc_tokens_cut,
                }
                results[i] = row
                if on_result is not None:
                    on_result(i, row)
        bar.update(sum(len(g) for g in batch))
    bar.close()
    return results


def train_facts(lora_weights: str | None) -> dict[str, Any] | None:
    """What the adapter was trained on (from its run_config.json), for downstream scoring."""
    if not lora_weights:
        return None
    path = Path(lora_weights) / "run_config.json"
    if not path.is_file():
        return {"task": None, "num_defense": None, "num_safety": None, "data_path": None}
    rc = read_json(path)
    config = rc.get("config") if isinstance(rc.get("config"), dict) else {}
    method = rc.get("method") if isinstance(rc.get("method"), dict) else {}
    return {
        **rc.get("train_data", {}),
        "seed": config.get("seed"),
        # DPO started from an adapter (the SFT one) is its own method: sft+dpo
        "method": ("sft+dpo" if method.get("name") == "dpo" and method.get("init") else None)
        or method.get("name")
        or config.get("method")
        or "sft",
        **({"beta": method["beta"]} if "beta" in method else {}),
    }


def final_document(
    records: list[Record],
    rows: dict[str, dict],
    parameters: dict[str, Any],
    metadata: dict[str, Any],
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "parameters": parameters,
        "instructions": [r.instruction for r in records],
        "inputs": [r.input for r in records],
        "outputs": [rows[r.id]["output"] for r in records],
        "ids": [r.id for r in records],
    }
    if any(r.reference is not None for r in records):
        doc["references"] = [r.reference for r in records]
    if any(r.kind is not None for r in records):
        doc["kinds"] = [r.kind for r in records]
    if any(r.category is not None for r in records):
        doc["types"] = [r.category for r in records]
    doc["metadata"] = metadata
    return doc


def file_kind(eval_path: Path, records: list[Record]) -> str | None:
    """The document kind a file declares (one kind, or `xstest` for XSTest's mix of safe and
    unsafe prompts, `mixed` for another mix), else the kind its name implies."""
    from crossdefense.xstest import FILE_KIND, KINDS

    kinds = {r.kind for r in records} - {None}
    if not kinds:
        return doc_kind(eval_path.stem)
    if len(kinds) == 1:
        return kinds.pop()
    return FILE_KIND if kinds <= set(KINDS) else "mixed"


def eval_metadata(
    eval_path: Path, records: list[Record], sha256: str | None = None
) -> dict[str, Any]:
    return {
        "eval_file": str(eval_path),
        "eval_stem": eval_path.stem,
        "eval_sha256": sha256 or sha256_file(eval_path),
        "eval_task": eval_task(records),
        "doc_kind": file_kind(eval_path, records),
        "n_records": len(records),
    }


@dataclass
class Job:
    """One eval file of a run: its records (this shard's), where its answers go, and the
    answers already there from an interrupted run."""

    eval_path: Path
    records: list[Record]
    paths: OutputPaths
    eval_sha256: str = ""
    current: bool = False  # its final output exists and was made with these settings and file
    done: dict[str, dict] = field(default_factory=dict)
    discard: bool = False  # its progress file is replaced (--overwrite of other work)


def run_generation(
    *,
    base_model: str,
    lora_weights: str | None,
    input_paths: list[Path],
    output_path: str,
    run_name: str,
    prompt_template: str | None,
    cfg: DecodingConfig,
    batch_size: int,
    load_8bit: bool,
    load_4bit: bool,
    trust_remote_code: bool,
    overwrite: bool,
    num_shards: int = 1,
    shard_index: int = 0,
    skip_existing: bool = False,
    flags: dict[str, Any] | None = None,
    share_prefix: bool = True,
) -> list[Path]:
    """Validate everything, load the model once, then generate every eval file in turn."""
    from crossdefense import modeling

    run_name = check_request(output_path, run_name, input_paths, batch_size)
    modeling.check_quantization(load_8bit, load_4bit)
    modeling.check_base_model(base_model)
    if lora_weights:
        modeling.check_adapter_dir(lora_weights)
        warn_other_base(base_model, lora_weights)
    # The template is resolved before the model loads: bad names fail fast, and the settings
    # fingerprint (which decides resume and skip) needs no model.
    prompter = resolve_prompter(prompt_template, lora_weights)
    fingerprint = stages.fingerprint(
        generation_settings(base_model, lora_weights, prompter, cfg, load_8bit, load_4bit)
    )
    # every eval file is read (and so validated) once, before anything is written
    eval_records = [(Path(path), read_eval_records(path)) for path in input_paths]
    suffix = shard_suffix(shard_index, num_shards)
    # shards of one run write different files into one folder: one lock per shard
    lock = f"{LOCK_FILE.removesuffix('.lock')}{suffix}.lock"
    with output_lock(Path(output_path) / run_name, "generation", name=lock):
        jobs = plan_jobs(
            eval_records, output_path, run_name, suffix, fingerprint, skip_existing, overwrite
        )
        if not jobs:
            return []
        for job in jobs:  # read before the model loads: a corrupt progress file fails fast
            job.records = shard(job.records, num_shards, shard_index)
            # --overwrite redoes a finished output made the same way, and replaces progress
            # made with other settings; an interrupted run with these settings resumes (as the
            # Ctrl-C line promises), also when an older output of other settings is still there
            done = None
            if not (overwrite and job.current):
                done = load_done(job.paths.jsonl, fingerprint, job.records, replace=overwrite)
            job.done, job.discard = done or {}, done is None
            log.info(
                "%s: %d records, %d already done", job.eval_path, len(job.records), len(job.done)
            )
        model, tokenizer = load_model(
            base_model, lora_weights, prompter, load_8bit, load_4bit, trust_remote_code
        )
        for job in jobs:  # only now that the model is loaded: a failed load loses nothing
            if job.discard:
                job.paths.jsonl.unlink(missing_ok=True)
            merged = output_paths(output_path, run_name, job.eval_path).final
            if overwrite and suffix and merged.is_file():
                # a shard redone: the merged file built from its old answers is out of date
                log.warning(
                    "%s: merged from the old shard; removed (merge the shards again)", merged
                )
                merged.unlink()
                merged.with_suffix(".jsonl").unlink(missing_ok=True)
            if overwrite and not job.current:
                # an output of other settings being replaced: gone now, so an interruption
                # leaves only this run's progress, never the old result looking current
                job.paths.final.unlink(missing_ok=True)
        run_meta = {
            "run_name": run_name,
            "model_name": short_model_name(base_model),
            "train": train_facts(lora_weights),
            "generation": {
                **cfg.to_dict(),
                "batch_size": batch_size,
                "share_prefix": share_prefix,
                "load_4bit": load_4bit,
                "shard": [shard_index, num_shards],
            },
            "config_fingerprint": fingerprint,
            **{k: v for k, v in run_metadata(flags or {}).items() if k in RUN_META_KEYS},
        }
        generate_jobs(jobs, model, tokenizer, prompter, cfg, batch_size, fingerprint, share_prefix)
        parameters = {
            "model": base_model,
            "prompt_template": prompter.name,
            "lora_weights": lora_weights,
            "load_8bit": load_8bit,
        }
        written = []
        for job in jobs:
            metadata = {**run_meta, **eval_metadata(job.eval_path, job.records, job.eval_sha256)}
            write_json(job.paths.final, final_document(job.records, job.done, parameters, metadata))
            written.append(job.paths.final)
        return written


def warn_other_base(base_model: str, lora_weights: str) -> None:
    """An adapter put on a model other than the one it names (its adapter_config.json): a
    shape mismatch is an error when it loads, an equal-shaped other model only this warning."""
    from crossdefense.modeling import adapter_base_model

    trained_on = adapter_base_model(lora_weights)
    if not trained_on:
        return
    same = Path(trained_on).expanduser().resolve() == Path(base_model).expanduser().resolve()
    if not same and short_model_name(trained_on) != short_model_name(base_model):
        log.warning(
            "%s was trained on %s, not on --base_model %s: its answers may mean little",
            lora_weights,
            trained_on,
            base_model,
        )


RUN_META_KEYS = ("command", "git_hash", "versions", "date")


def check_request(
    output_path: str | Path, run_name: Any, input_paths: list[Path], batch_size: int
) -> str:
    """The run name (one path component), the output folder and the inputs, checked before
    anything loads; returns the run name."""
    run_name = path_component(run_name, "--run_name")
    out_root = Path(output_path)
    if out_root.exists() and not out_root.is_dir():
        raise UserError(f"--output_path {out_root}: exists and is not a directory")
    if (out_root / run_name).is_symlink():
        raise UserError(
            f"{out_root / run_name}: the run folder is a symbolic link; outputs are written "
            "only inside --output_path"
        )
    if batch_size < 1:
        raise UserError("--batch_size must be >= 1")
    stems: dict[str, Path] = {}
    for path in input_paths:
        if Path(path).stem in stems:
            raise UserError(
                f"{stems[Path(path).stem]} and {path} have the same name: their outputs would "
                "overwrite each other; rename one"
            )
        stems[Path(path).stem] = Path(path)
    return run_name


def resolve_prompter(prompt_template: str | None, lora_weights: str | None) -> Prompter:
    """The template asked for, else the one stored with the adapter, else alpaca."""
    from crossdefense.prompts import load_prompter, stored_prompter

    if prompt_template:
        return load_prompter(prompt_template)
    stored = stored_prompter(lora_weights) if lora_weights else None
    return stored if stored is not None else load_prompter("alpaca")


def generation_settings(
    base_model: str,
    lora_weights: str | None,
    prompter: Prompter,
    cfg: DecodingConfig,
    load_8bit: bool,
    load_4bit: bool,
) -> dict[str, Any]:
    """Everything that decides what an answer is: the run's settings fingerprint hashes it."""
    from crossdefense import modeling

    return {
        "base_model": base_model,
        # a local base model's weight files (names, sizes, modification times): weights
        # replaced in place invalidate old outputs, as a retrained adapter does
        "base_model_files": modeling.model_files_signature(base_model),
        "lora_weights": lora_weights,
        # the adapter's bytes, not just its path: a retrained adapter invalidates old outputs
        "adapter_sha256": modeling.adapter_sha256(lora_weights) if lora_weights else None,
        "template": prompter.to_dict(),
        "decoding": cfg.to_dict(),
        "load_8bit": load_8bit,
        "load_4bit": load_4bit,
    }


def plan_jobs(
    eval_records: list[tuple[Path, list[Record]]],
    output_path: str | Path,
    run_name: str,
    suffix: str,
    fingerprint: str,
    skip_existing: bool,
    overwrite: bool,
) -> list[Job]:
    """The eval files still to answer (held under the run's lock): an output made the same
    way is skipped with --skip_existing, any other existing output needs --overwrite."""
    jobs = []
    for path, records in eval_records:
        paths = output_paths(output_path, run_name, path, suffix)
        if paths.final.is_symlink() or paths.jsonl.is_symlink():
            raise UserError(
                f"{paths.final.parent}: {paths.jsonl.name} or {paths.final.name} is a "
                "symbolic link; outputs are written only inside the run folder"
            )
        if path.resolve() in (paths.final.resolve(), paths.jsonl.resolve()):
            raise UserError(
                f"{path}: the eval file is also this run's output; choose another "
                "--output_path or --run_name"
            )
        eval_sha256 = sha256_file(path)
        current = paths.final.exists() and _made_by(paths.final) == (fingerprint, eval_sha256)
        if paths.final.exists():
            if skip_existing and current:
                log.info("%s: done with the same settings and eval file, skipped", paths.final)
                continue
            if not overwrite:
                raise UserError(f"{paths.final} exists; pass --overwrite to replace it")
        jobs.append(Job(path, records, paths, eval_sha256, current))
    return jobs


def load_model(
    base_model: str,
    lora_weights: str | None,
    prompter: Prompter,
    load_8bit: bool,
    load_4bit: bool,
    trust_remote_code: bool,
) -> tuple[Any, Any]:
    """(model in eval mode, tokenizer); the prompter gets the tokenizer (a chat template on a
    tokenizer without one fails here, before the weights load)."""
    from crossdefense import modeling

    tokenizer = modeling.load_tokenizer(base_model, trust_remote_code)
    prompter.tokenizer = tokenizer
    prompter.build("check", "")
    model = modeling.load_base_model(base_model, load_8bit, load_4bit, trust_remote_code)
    if lora_weights:
        model = modeling.load_adapter(model, lora_weights)
    model.eval()
    return model, tokenizer


def generate_jobs(
    jobs: list[Job],
    model: Any,
    tokenizer: Any,
    prompter: Prompter,
    cfg: DecodingConfig,
    batch_size: int,
    fingerprint: str,
    share_prefix: bool,
) -> None:
    """Answer every record not yet done, all files pooled into one length-sorted stream (so
    batches fill across files); each answer is appended to its file's progress log at once."""
    pooled: list[Record] = []
    owner: list[Job] = []
    for job in jobs:
        todo = [r for r in job.records if r.id not in job.done]
        pooled.extend(todo)
        owner.extend([job] * len(todo))

    def keep(i: int, row: dict) -> None:
        row = {**row, "config": fingerprint, "record_hash": record_hash(fingerprint, pooled[i])}
        append_row(owner[i].paths.jsonl, row)
        owner[i].done[row["id"]] = row

    generate_records(
        model,
        tokenizer,
        prompter,
        pooled,
        cfg,
        batch_size,
        on_result=keep,
        share_prefix=share_prefix,
    )


def _made_by(final: Path) -> tuple[str | None, str | None]:
    """(settings fingerprint, eval file sha256) a final file records: skipping it needs both
    to match, so an edited eval file is never answered with old outputs."""
    try:
        meta = read_json(final).get("metadata", {})
    except UserError:
        return None, None
    return meta.get("config_fingerprint"), meta.get("eval_sha256")


def append_row(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    append_jsonl(path, row)
