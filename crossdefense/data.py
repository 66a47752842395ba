"""Records in, token ids out: reading training/eval files, label masking, and truncation that
cuts the *document* and keeps the template, the task instruction and the response.

The one place where a prompt becomes tokens (`encode`), used by the trainer and the generator.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_json_or_jsonl
from crossdefense.prompts import Prompter
from crossdefense.tasks import check_kind, split_prompt

log = logging.getLogger(__name__)
IGNORE_INDEX = -100


@dataclass
class Record:
    """One instruction-following example; `output` is None for evaluation prompts."""

    id: str
    instruction: str
    input: str = ""
    output: str | None = None
    reference: str | None = None
    # eval records only: the document kind when the file declares it (`harmful`, `useful`,
    # `xstest_safe`, ...) and a finer category (XSTest's `type`)
    kind: str | None = None
    category: str | None = None


def _text_field(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key, "" if not required else None)
    if value is None:
        raise UserError(f"{where}: missing field {key!r}")
    if not isinstance(value, str):
        raise UserError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    return value


def read_training_records(path: str | Path) -> list[Record]:
    """An Alpaca-style JSON list or JSONL of {instruction, input, output}."""
    rows = read_json_or_jsonl(path)
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list):
        raise UserError(f"{path}: expected a list of {{instruction, input, output}} records")
    if not rows:
        raise UserError(f"{path}: no records")
    records = []
    for i, row in enumerate(rows):
        where = f"{path}: record {i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object, got {type(row).__name__}")
        records.append(
            Record(
                id=str(row.get("id", i)),
                instruction=_text_field(row, "instruction", where),
                input=_text_field(row, "input", where, required=False),
                output=_text_field(row, "output", where),
            )
        )
    return records


def _xstest_kind(label: Any, where: str) -> str:
    from crossdefense.xstest import SAFE, UNSAFE

    if label not in ("safe", "unsafe"):
        raise UserError(f"{where}: label {label!r} is neither safe nor unsafe")
    return SAFE if label == "safe" else UNSAFE


def _check_labelled(kind: str | None, where: str, declared: str | None = None) -> None:
    """`xstest` names a file of safe and unsafe prompts; each record must say which it is (a
    record left as plain `xstest` would be counted in neither rate)."""
    from crossdefense.xstest import FILE_KIND

    if kind == FILE_KIND:
        via = " (the file's doc_kind)" if declared == FILE_KIND else ""
        raise UserError(
            f"{where}: kind 'xstest'{via} without a safe/unsafe label; give per-record "
            "'labels' (safe/unsafe) or kinds xstest_safe/xstest_unsafe"
        )


def _optional_list(data: dict, keys: tuple[str, ...], n: int, path: Path | str) -> list | None:
    """The first of `keys` present: a list of n strings (or None)."""
    for key in keys:
        if data.get(key) is None:
            continue
        values = data[key]
        if not isinstance(values, list) or len(values) != n:
            raise UserError(f"{path}: {key!r} must be a list of {n} values, one per record")
        if not all(v is None or isinstance(v, str) for v in values):
            raise UserError(f"{path}: {key!r} must hold strings")
        return values
    return None


@dataclass
class Pair:
    """One preference example: a prompt (instruction + input) and a preferred (`chosen`) and a
    dispreferred (`rejected`) response, e.g. a refusal and doing the task on a harmful document."""

    id: str
    instruction: str
    input: str
    chosen: str
    rejected: str

    def with_response(self, which: str) -> Record:
        return Record(self.id, self.instruction, self.input, getattr(self, which))


def read_preference_records(path: str | Path) -> list[Pair]:
    """Alpaca-style JSON/JSONL records `{instruction, input, chosen, rejected}` (the format of
    `build_defense_data.py --format dpo`; a user's own file works the same)."""
    rows = read_json_or_jsonl(path)
    if isinstance(rows, dict) and isinstance(rows.get("data"), list):
        rows = rows["data"]
    if not isinstance(rows, list) or not rows:
        raise UserError(f"{path}: expected a list of {{instruction, input, chosen, rejected}}")
    pairs = []
    for i, row in enumerate(rows):
        where = f"{path}: record {i}"
        if not isinstance(row, dict):
            raise UserError(f"{where}: expected an object, got {type(row).__name__}")
        if "chosen" not in row and "output" in row:
            raise UserError(
                f"{where}: has 'output' but no 'chosen'/'rejected': an SFT record; train it "
                "with --method sft, or build preference pairs (build_defense_data.py --format dpo)"
            )
        pair = Pair(
            id=str(row.get("id", i)),
            instruction=_text_field(row, "instruction", where),
            input=_text_field(row, "input", where, required=False),
            chosen=_text_field(row, "chosen", where),
            rejected=_text_field(row, "rejected", where),
        )
        if pair.chosen == pair.rejected:
            raise UserError(f"{where}: 'chosen' and 'rejected' are the same text")
        pairs.append(pair)
    return pairs


def read_eval_records(path: str | Path) -> list[Record]:
    """Upstream's `{"instructions": [...], "inputs": [...]}` (inputs may be empty, optional
    `ids`/`references`), an Alpaca-style record list / JSONL (outputs ignored), or XSTest's
    prompts CSV.

    A file may declare what its documents are: `doc_kind` for all of them, or per record
    `kinds` (or XSTest's `labels`, safe/unsafe) and `types` (a finer category)."""
    from crossdefense.xstest import is_xstest_csv, read_prompts

    if is_xstest_csv(path):
        return [
            Record(r["id"], r["prompt"], kind=r["kind"], category=r["type"])
            for r in read_prompts(path)
        ]
    data = read_json_or_jsonl(path)
    if isinstance(data, dict):
        if "instructions" not in data:
            raise UserError(f"{path}: expected an 'instructions' list (upstream eval schema)")
        instructions = data["instructions"]
        inputs = data.get("inputs") or []
        ids = data.get("ids") or [str(i) for i in range(len(instructions))]
        refs = data.get("references")
        for key, values in (("instructions", instructions), ("inputs", inputs), ("ids", ids)):
            if not isinstance(values, list):
                raise UserError(f"{path}: {key!r} must be a list")
        if refs is not None and (
            not isinstance(refs, list) or not all(r is None or isinstance(r, str) for r in refs)
        ):
            raise UserError(f"{path}: 'references' must be a list of strings (or nulls)")
        if not instructions:
            raise UserError(f"{path}: no records")
        if inputs and len(inputs) != len(instructions):
            raise UserError(f"{path}: {len(instructions)} instructions but {len(inputs)} inputs")
        if len(ids) != len(instructions) or (refs is not None and len(refs) != len(instructions)):
            raise UserError(f"{path}: 'ids'/'references' length differs from 'instructions'")
        n = len(instructions)
        declared = data.get("doc_kind")
        if declared is not None:
            if not isinstance(declared, str):
                raise UserError(f"{path}: 'doc_kind' must be a string")
            declared = check_kind(declared, f"{path}: doc_kind")
        kinds = _optional_list(data, ("kinds", "doc_kinds"), n, path)
        labels = _optional_list(data, ("labels", "label"), n, path)
        if kinds is None and labels is not None:
            kinds = [_xstest_kind(x, f"{path}: record {i}") for i, x in enumerate(labels)]
        if kinds is not None:
            kinds = [
                k if k is None else check_kind(k, f"{path}: record {i}")
                for i, k in enumerate(kinds)
            ]
        for i in range(n):
            _check_labelled(
                (kinds[i] if kinds else None) or declared, f"{path}: record {i}", declared
            )
        types = _optional_list(data, ("types", "type"), n, path)
        records = []
        for i, instruction in enumerate(instructions):
            inp = inputs[i] if inputs else ""
            if not isinstance(instruction, str) or not isinstance(inp, str):
                raise UserError(f"{path}: record {i}: instruction and input must be strings")
            records.append(
                Record(
                    str(ids[i]),
                    instruction,
                    inp,
                    reference=refs[i] if refs else None,
                    kind=(kinds[i] if kinds else None) or declared,
                    category=types[i] if types else None,
                )
            )
        if len({r.id for r in records}) != len(records):
            raise UserError(f"{path}: duplicate ids")
        return records
    if isinstance(data, list):
        if not data:
            raise UserError(f"{path}: no records")
        records = []
        for i, row in enumerate(data):
            where = f"{path}: record {i}"
            if not isinstance(row, dict):
                raise UserError(f"{where}: expected an object, got {type(row).__name__}")
            kind = row.get("kind", row.get("doc_kind"))
            if kind is None and row.get("label") is not None:
                kind = _xstest_kind(row["label"], where)
            category = row.get("type")
            for key, value in (("kind", kind), ("type", category)):
                if value is not None and not isinstance(value, str):
                    raise UserError(f"{where}: field {key!r} must be a string")
            kind = None if kind is None else check_kind(kind, where)
            _check_labelled(kind, where)
            records.append(
                Record(
                    id=str(row.get("id", i)),
                    instruction=_text_field(row, "instruction", where),
                    input=_text_field(row, "input", where, required=False),
                    reference=row.get("reference"),
                    kind=kind,
                    category=category,
                )
            )
        if len({r.id for r in records}) != len(records):
            raise UserError(f"{path}: duplicate ids")
        return records


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int] | None
    doc_tokens_cut: int = 0
    target_tokens_cut: int = 0


@dataclass
class TruncationStats:
    records: int = 0
    documents_cut: int = 0
    document_tokens_cut: int = 0
    max_document_tokens_cut: int = 0
    targets_cut: int = 0
    target_tokens_cut: int = 0
    examples: list[str] = field(default_factory=list)

    def add(self, record_id: str, enc: Encoded) -> None:
        self.records += 1
        if enc.doc_tokens_cut:
            self.documents_cut += 1
            self.document_tokens_cut += enc.doc_tokens_cut
            self.max_document_tokens_cut = max(self.max_document_tokens_cut, enc.doc_tokens_cut)
        if enc.target_tokens_cut:
            self.targets_cut += 1
            self.target_tokens_cut += enc.target_tokens_cut
        if (enc.doc_tokens_cut or enc.target_tokens_cut) and len(self.examples) < 10:
            self.examples.append(record_id)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _tokenize(tokenizer, text: str, add_special_tokens: bool):
    """ids and character offsets (offsets None for tokenizers that cannot give them)."""
    try:
        enc = tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]
    except NotImplementedError:
        return tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"], None


def _cuttable(record: Record) -> tuple[str, str]:
    """(where the document is, the document): the part before a task instruction, else the input."""
    document, _ = split_prompt(record.instruction)
    if document:
        return "instruction", document
    if record.input:
        return "input", record.input
    return "none", ""


def _with_document(record: Record, where: str, document: str) -> Record:
    if where == "instruction":
        _, suffix = split_prompt(record.instruction)
        return Record(record.id, document + suffix, record.input, record.output)
    if where == "input":
        return Record(record.id, record.instruction, document, record.output)
    return record


def _doc_prefix(tokenizer, document: str, n_tokens: int) -> str:
    """The document's first `n_tokens` tokens, as text (cut at a token boundary)."""
    if n_tokens <= 0:
        return ""
    ids, offsets = _tokenize(tokenizer, document, add_special_tokens=False)
    if n_tokens >= len(ids):
        return document
    if offsets is not None:
        return document[: offsets[n_tokens - 1][1]]
    return tokenizer.decode(ids[:n_tokens], skip_special_tokens=True)


def encode(
    tokenizer,
    prompter: Prompter,
    record: Record,
    max_len: int,
    train_on_inputs: bool = False,
    add_eos_token: bool = True,
) -> Encoded:
    """Token ids (and labels when the record has an output) that fit in `max_len` tokens.

    When too long, the document is cut from its end (the task instruction after it stays);
    if the prompt without its document still leaves no room, that is a UserError; a response
    that cannot fit whole is cut at its end (counted). Labels mask every token that starts
    inside the prompt unless `train_on_inputs`.
    """
    special = not prompter.is_chat  # chat templates write their own special tokens
    eos = [tokenizer.eos_token_id] if (record.output is not None and add_eos_token) else []
    where, document = _cuttable(record)
    doc_len = len(_tokenize(tokenizer, document, False)[0]) if document else 0
    keep = doc_len
    current = record
    for _ in range(8):  # token boundaries shift by a few tokens when the text changes; converge
        prompt = prompter.build(current.instruction, current.input)
        text = prompt if current.output is None else prompter.training_text(prompt, current.output)
        ids, offsets = _tokenize(tokenizer, text, special)
        excess = len(ids) + len(eos) - max_len
        if excess <= 0 or keep == 0:
            break
        keep = max(0, keep - excess)
        current = _with_document(record, where, _doc_prefix(tokenizer, document, keep))
    doc_cut = doc_len - keep

    if offsets is not None:
        # First token that starts at or after the response; a token straddling the boundary
        # and zero-width special tokens before it count as prompt.
        n = len(prompt)
        prompt_tokens = next((i for i, (s, e) in enumerate(offsets) if s >= n and e > s), len(ids))
    else:
        prompt_tokens = len(_tokenize(tokenizer, prompt, special)[0])
    prompt_tokens = min(prompt_tokens, len(ids))

    target_cut = 0
    if len(ids) + len(eos) > max_len:
        room = max_len - prompt_tokens - len(eos)
        if current.output is None or room < 1:
            raise UserError(
                f"record {record.id}: the prompt without its document needs {prompt_tokens} "
                f"tokens{' plus the response' if current.output is not None else ''}; "
                f"the limit is {max_len} (raise --cutoff_len / --max_input_tokens)"
            )
        target_cut = len(ids) - prompt_tokens - room
        ids = ids[: prompt_tokens + room]
    ids = ids + eos
    labels = None
    if current.output is not None:
        labels = (
            list(ids) if train_on_inputs else [IGNORE_INDEX] * prompt_tokens + ids[prompt_tokens:]
        )
    return Encoded(ids, labels, doc_cut, target_cut)


@dataclass
class EncodedPair:
    """A preference pair as token ids: the shared prompt and each response (EOS included)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int]
    doc_tokens_cut: int = 0
    target_tokens_cut: int = 0


def encode_pair(
    tokenizer, prompter: Prompter, pair: Pair, max_len: int, add_eos_token: bool = True
) -> EncodedPair:
    """Both sides of a pair through `encode`, with the same (document-first) truncation.

    The document is cut as much as the longer side needs, so both sides share one prompt; the
    prompt is their common token prefix (a token straddling the prompt/response boundary counts
    as response, as in TRL), and `prompt + chosen` is exactly `encode` of the chosen record.
    """
    chosen, rejected = pair.with_response("chosen"), pair.with_response("rejected")
    where, document = _cuttable(chosen)
    doc_len = len(_tokenize(tokenizer, document, False)[0]) if document else 0
    keep = doc_len
    sides = (chosen, rejected)
    for _ in range(4):  # cut the document once for the longer side, then both fit it
        first = [encode(tokenizer, prompter, r, max_len, False, add_eos_token) for r in sides]
        cuts = [e.doc_tokens_cut for e in first]
        if cuts[0] == cuts[1]:
            break
        keep -= max(cuts)
        short = _doc_prefix(tokenizer, document, keep)
        sides = tuple(_with_document(r, where, short) for r in (chosen, rejected))
    cut = doc_len - keep + min(e.doc_tokens_cut for e in first)
    (c_ids, c_labels), (r_ids, _) = [(e.input_ids, e.labels) for e in first]
    prompt_len = next((i for i, lab in enumerate(c_labels) if lab != IGNORE_INDEX), len(c_ids))
    shared = 0
    limit = min(prompt_len, len(r_ids))
    while shared < limit and c_ids[shared] == r_ids[shared]:
        shared += 1
    return EncodedPair(
        prompt_ids=c_ids[:shared],
        chosen_ids=c_ids[shared:],
        rejected_ids=r_ids[shared:],
        doc_tokens_cut=cut,
        target_tokens_cut=max(e.target_tokens_cut for e in first),
    )
