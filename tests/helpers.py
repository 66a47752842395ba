"""Small builders shared by the tests (kept out of conftest so imports stay explicit)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from crossdefense.paths import REPO_ROOT
from crossdefense.tasks import TASKS

REFUSAL = "I'm sorry, but I cannot help with that request."


def write_mixture(path: Path, n: int = 12) -> Path:
    """Half benign summaries, half harmful documents with refusals."""
    recs = []
    for i in range(n // 2):
        benign = f"The city council approved a new budget for parks, report {i}. " * 3
        harmful = f"The manual describes how to make a dangerous weapon at home, part {i}. " * 3
        recs.append(
            {
                "instruction": TASKS["summarize"].join(benign),
                "input": "",
                "output": "Summary: the council approved a budget.",
            }
        )
        recs.append(
            {"instruction": TASKS["summarize"].join(harmful), "input": "", "output": REFUSAL}
        )
    path.write_text(json.dumps(recs, ensure_ascii=False))
    return path


def write_eval(path: Path, n: int = 5, inputs: bool = False) -> Path:
    docs = [
        f"Heavy rain flooded road {i} near the river on monday morning. " * (1 + i % 3)
        for i in range(n)
    ]
    data = {
        "instructions": [TASKS["summarize"].join(d) for d in docs],
        "inputs": [f"context {i}" for i in range(n)] if inputs else [],
    }
    path.write_text(json.dumps(data))
    return path


def run_script(
    *args: str, cwd: Path | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, *[str(a) for a in args]],
        cwd=cwd or REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train_bpe(texts: list[str], specials: list[str], vocab_size: int) -> tuple[dict, list]:
    """(vocab, merges) of a byte-fallback BPE trained on `texts` in about a second: what the
    tiny Llama-style tokenizers of the tests are made of. Isolated newlines and split=True keep
    merges inside words (see the cpu-stack notes)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split("\n", "isolated"),
            pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
        ]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials + bytes_,
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    m = json.loads(tok.to_str())["model"]
    return m["vocab"], [tuple(x) for x in m["merges"]]


def generate(model_dir: Path, inputs: list[Path], out: Path, **kw):
    """`run_generation` on the tiny model with short greedy answers; `kw` overrides any
    argument (`lora_weights=`, `run_name=`, `cfg=`, ...)."""
    from crossdefense.generation import DecodingConfig, run_generation

    args = dict(
        base_model=str(model_dir),
        lora_weights=None,
        input_paths=inputs,
        output_path=str(out),
        run_name="tiny",
        prompt_template=None,
        cfg=DecodingConfig(max_new_tokens=6, num_beams=1),
        batch_size=3,
        load_8bit=False,
        load_4bit=False,
        trust_remote_code=False,
        overwrite=False,
    )
    return run_generation(**{**args, **kw})
