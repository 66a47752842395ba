"""The miniature cross-task defense experiment on the embedded SmolLM2-135M-Instruct.

Everything runs offline on CPU: convert the embedded model, build summarize-defense mixtures
from the self-authored mini data, LoRA-tune, generate on the mini evaluation sets of all five
tasks (harmful / news / benign-but-sensitive) for the base model and each adapter, judge,
and write a report. Each step is skipped when its output exists and was made the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_json, read_jsonl, write_json, write_jsonl
from crossdefense.paths import (
    CHECKPOINTS_DIR,
    EMBEDDED_MODEL_DIR,
    EVALUATION_DIR,
    MINI_DATA_DIR,
    XSTEST_DIR,
)
from crossdefense.runs import run_name as derive_run_name
from crossdefense.tasks import TASK_NAMES, TASKS, get_task
from crossdefense.xstest import PROMPTS_FILE

log = logging.getLogger(__name__)
DOCS = MINI_DATA_DIR / "documents"


@dataclass
class DemoConfig:
    base_model: str = str(EMBEDDED_MODEL_DIR)
    prompt_template: str = "chat"
    task: str = "summarize"
    numbers: tuple[int, ...] = (40,)
    eval_dir: str = str(MINI_DATA_DIR / "evaluation")
    eval_tasks: tuple[str, ...] = TASK_NAMES
    eval_limit: int = 12
    alpaca_size: int = 40  # plain Alpaca rows; benign document-task rows come on top
    contrast: bool = False  # also train on the 40 topic-matched contrast documents
    num_safety: int = 16
    max_steps: int = 32
    micro_batch_size: int = 8
    learning_rate: float = 2e-3
    lora_r: int = 8
    lora_alpha: int = 16
    lora_target_modules: tuple[str, ...] = (
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    )
    cutoff_len: int = 384
    max_new_tokens: int = 32
    batch_size: int = 32
    seeds: tuple[int, ...] = (42,)  # one adapter per seed and N; the first seeds the data
    methods: tuple[str, ...] = ("sft",)  # sft (the paper) and/or dpo (preference pairs)
    dpo_learning_rate: float = 2e-3
    dpo_micro_batch_size: int = 4  # pairs per step: 8 sequences, as many as an SFT step
    # dpo starts from: "base" (a fresh LoRA, reference = base model) or "sft" (each SFT
    # adapter, its own reference; the rejected side is still the base model's answers, which
    # the SFT adapter would mostly refuse itself; needs --method sft,dpo)
    dpo_init: str = "base"
    dpo_steps: int = 0  # 0 = --max_steps
    beta: float = 0.1
    sft_weight: float = 1.0  # DPO + NLL of the chosen response (pure DPO barely moved: README)
    eval_offset: int = 0  # first document of each eval file (e.g. 50 for documents 50-99)
    # questions of the offline lm-eval capability task per model (base and each adapter; 0 = none)
    capability_limit: int = 40
    judges: tuple[str, ...] = ("keyword", "learned")  # keyword reads this 135M model best (README)
    # XSTest prompts per type (18 types; 0 = none); skipped with a warning when the default
    # file is absent (scripts/download_data.sh fetches it), an error for a path given
    xstest_per_type: int = 2
    xstest_path: str = str(XSTEST_DIR / PROMPTS_FILE)
    output_dir: str = str(EVALUATION_DIR / "demo")
    checkpoint_dir: str = str(CHECKPOINTS_DIR / "demo")


ANSWERS = {
    "summarize": lambda r: r["summary"],
    "translate": lambda r: r["translation_zh"],
    "sentiment": lambda r: r["sentiment_answer"],
    "case": lambda r: r["text"],
    "cloze": lambda r: r["next_sentence"],
}


def benign_task_records(rows: list[dict[str, Any]], defended: str) -> list[dict[str, str]]:
    """Benign documents processed under the defended task and two other tasks each.

    The first miniature run taught that a model shown harmful documents under a task, and too
    few benign ones under the same task, refuses every document of that kind: so every benign
    training document appears under the defended task (contrast), and under two more tasks in
    turn (so no task is only ever seen with refusals).
    """
    out = []
    for i, r in enumerate(rows):
        own = defended if defended in TASKS else TASK_NAMES[i % len(TASK_NAMES)]
        # Chinese translations are long: as extra tasks they would outweigh every refusal in
        # a token-averaged loss, so the second task is one of the short-answer ones.
        others = [t for t in TASK_NAMES if t not in (own, "translate")]
        for name in (own, others[i % len(others)], others[(i + 1) % len(others)]):
            doc = r["text"].lower() if name == "case" else r["text"]
            out.append(
                {"instruction": TASKS[name].join(doc), "input": "", "output": ANSWERS[name](r)}
            )
    return out


# benign_train ids from here on are contrast documents (data/README.md)
FIRST_CONTRAST_ID = 41


def benign_documents(contrast: bool) -> list[dict[str, Any]]:
    rows = read_jsonl(DOCS / "benign_train.jsonl")
    if contrast:
        return rows
    return [r for r in rows if int(r["id"].split("-")[1]) < FIRST_CONTRAST_ID]


def write_benign_pool(
    path: Path, defended: str, num_alpaca: int, contrast: bool = False
) -> tuple[Path, int]:
    """The benign part of the demo mixture: document tasks + the first `num_alpaca` Alpaca rows."""
    rows = benign_task_records(benign_documents(contrast), defended)
    rows += read_jsonl(MINI_DATA_DIR / "alpaca.jsonl")[:num_alpaca]
    write_jsonl(path, rows)
    return path, len(rows)


def eval_sources(eval_dir: str | Path, tasks: Sequence[str]) -> list[Path]:
    """test_{task}{,_cnn,_useful}.json of every task, each checked to be there."""
    sources = []
    for task in tasks:
        for suffix in ("", "_cnn", "_useful"):
            src = Path(eval_dir) / f"test_{task}{suffix}.json"
            if not src.is_file():
                raise UserError(f"{src}: evaluation file not found (--eval_dir)")
            sources.append(src)
    return sources


def eval_subset(
    eval_dir: Path, tasks: tuple[str, ...], limit: int, out_dir: Path, offset: int = 0
) -> list[Path]:
    """Records `offset` .. `offset + limit - 1` of test_{task}{,_cnn,_useful}.json (upstream
    schema kept; ids stay the upstream positions, so runs on two ranges never mix)."""
    written = []
    for src in eval_sources(eval_dir, tasks):
        data = read_json(src)
        n = len(data.get("instructions") or [])
        if offset >= n:
            raise UserError(f"{src}: --eval_offset {offset} is past its {n} documents")
        data.setdefault("ids", [str(i) for i in range(n)])
        window = slice(offset, offset + limit)
        subset = {
            k: (v[window] if isinstance(v, list) and len(v) == n else v) for k, v in data.items()
        }
        dst = out_dir / src.name
        write_json(dst, subset, indent=1)
        written.append(dst)
    return written


def xstest_subset(cfg: DemoConfig, out_dir: Path) -> Path | None:
    """A balanced XSTest sample (`xstest_per_type` prompts of each type) as an eval file, or
    None when XSTest is off or its default file was never downloaded."""
    from crossdefense.xstest import eval_document, read_prompts, subset

    path = Path(cfg.xstest_path)
    if cfg.xstest_per_type == 0:
        return None
    if not path.is_file():
        log.warning("XSTest skipped: %s not found (scripts/download_data.sh fetches it)", path)
        return None
    rows = subset(read_prompts(path), cfg.xstest_per_type, seed=cfg.seeds[0])
    dst = out_dir / "xstest.json"
    write_json(dst, eval_document(rows, str(path)), indent=1)
    return dst


def validate(cfg: DemoConfig) -> None:
    get_task(cfg.task)
    for t in cfg.eval_tasks:
        get_task(t)
    if not cfg.numbers or any(n < 1 for n in cfg.numbers):
        raise UserError("--numbers must be positive defense sizes, e.g. 20,40")
    if len(set(cfg.numbers)) != len(cfg.numbers):
        raise UserError("--numbers: a defense size is listed twice")
    if cfg.eval_limit < 1:
        raise UserError("--eval_limit must be >= 1")
    if cfg.eval_offset < 0:
        raise UserError("--eval_offset must be >= 0")
    if cfg.max_steps < 1 or cfg.learning_rate <= 0 or cfg.max_new_tokens < 1:
        raise UserError("--max_steps and --max_new_tokens must be >= 1, --learning_rate > 0")
    eval_sources(cfg.eval_dir, cfg.eval_tasks)
    if not cfg.methods or any(m not in ("sft", "dpo") for m in cfg.methods):
        raise UserError("--method must be sft, dpo or sft,dpo")
    if cfg.dpo_init not in ("base", "sft") or (cfg.dpo_init == "sft" and "sft" not in cfg.methods):
        raise UserError("--dpo_init must be base, or sft together with --method sft,dpo")
    if cfg.dpo_steps < 0:
        raise UserError("--dpo_steps must be >= 0 (0 = --max_steps)")
    if cfg.beta <= 0 or cfg.dpo_learning_rate <= 0 or cfg.sft_weight < 0:
        raise UserError("--beta and --dpo_learning_rate must be > 0, --sft_weight >= 0")
    if cfg.capability_limit < 0:
        raise UserError("--capability_limit must be >= 0 (0 = no capability task)")
    if cfg.xstest_per_type < 0:
        raise UserError("--xstest must be >= 0 (prompts per XSTest type; 0 = none)")
    if cfg.xstest_per_type and cfg.xstest_path != DemoConfig.xstest_path:
        from crossdefense.xstest import read_prompts

        read_prompts(cfg.xstest_path)  # a path the user gave must be there and readable
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds) or any(s < 0 for s in cfg.seeds):
        raise UserError("--seeds must be distinct non-negative integers, e.g. 1,2,3")
    from crossdefense.judges import normalize_judge_names

    normalize_judge_names(cfg.judges)


# where the data and the adapter live, not what was trained: an adapter made from the same bytes
# with the same settings is reused whichever --output_dir the mixture was written to
_PLACE = ("data_path", "output_dir", "overwrite")


def trained_same_way(ckpt: Path, tcfg: Any) -> bool:
    """An adapter is reused when it was trained with the same settings on the same data."""
    from crossdefense.io import sha256_file

    rc_path = ckpt / "run_config.json"
    if not rc_path.is_file() or not (ckpt / "adapter_model.safetensors").is_file():
        return False
    rc = read_json(rc_path)
    old = {k: v for k, v in (rc.get("config") or {}).items() if k not in _PLACE}
    new = {k: v for k, v in json.loads(json.dumps(asdict(tcfg))).items() if k not in _PLACE}
    return old == new and rc.get("train_data", {}).get("sha256") == sha256_file(tcfg.data_path)


def mixture_arguments(cfg: DemoConfig, data_dir: Path) -> dict[str, Any]:
    """`build_defense_data` arguments of the demo's mixtures (its benign pool written into
    `data_dir` first): the one recipe the demo and the training benchmark share."""
    pool, pool_size = write_benign_pool(
        data_dir / "benign_pool.jsonl", cfg.task, cfg.alpaca_size, cfg.contrast
    )
    return dict(
        task=cfg.task,
        grid=list(cfg.numbers),
        alpaca_path=pool,
        alpaca_size=pool_size,
        safety_path=MINI_DATA_DIR / "safety.jsonl",
        num_safety=cfg.num_safety,
        documents_path=DOCS / "harmful_train.jsonl",
        refusals_path=MINI_DATA_DIR / "refusals.json",
        seed=cfg.seeds[0],
        output_dir=data_dir,
        eval_dir=cfg.eval_dir,
        overwrite=True,
    )


def run_demo(cfg: DemoConfig) -> Path:
    """Run every step; return the folder holding report.md and the plots."""
    from crossdefense.embedded import fetch_embedded_model
    from crossdefense.generation import DecodingConfig, run_generation
    from crossdefense.mixture import build_defense_data
    from crossdefense.report import make_report
    from crossdefense.scoring import score_paths
    from crossdefense.training import TrainConfig, train

    validate(cfg)
    out = Path(cfg.output_dir)
    if Path(cfg.base_model) == EMBEDDED_MODEL_DIR and fetch_embedded_model(EMBEDDED_MODEL_DIR):
        log.info("converted the embedded model into %s", EMBEDDED_MODEL_DIR)
    mixture_args = mixture_arguments(cfg, out / "data")
    evals = eval_subset(
        Path(cfg.eval_dir), cfg.eval_tasks, cfg.eval_limit, out / "eval", cfg.eval_offset
    )
    xstest = xstest_subset(cfg, out / "eval")
    evals += [xstest] if xstest else []
    decoding = DecodingConfig(
        max_new_tokens=cfg.max_new_tokens,
        num_beams=1,
        seed=cfg.seeds[0],
        max_input_tokens=cfg.cutoff_len,
    )
    gen_dir = out / "generations"

    def generate(run_name: str, lora: str | None, inputs: list[Path], into: Path) -> list[Path]:
        log.info("step: generate with %s", run_name)
        return run_generation(
            base_model=cfg.base_model,
            lora_weights=lora,
            input_paths=inputs,
            output_path=str(into),
            run_name=run_name,
            prompt_template=cfg.prompt_template,
            cfg=decoding,
            batch_size=cfg.batch_size,
            load_8bit=False,
            load_4bit=False,
            trust_remote_code=False,
            overwrite=True,  # outputs made another way are redone ...
            skip_existing=True,  # ... and those made the same way are kept
            flags={"demo": asdict(cfg)},
        )

    def capabilities(run_name: str, lora: str | None) -> None:
        """lm-eval's offline multiple-choice task, reused when the model and limit are the same."""
        from crossdefense.capabilities import evaluate_capabilities
        from crossdefense.modeling import adapter_sha256

        if not cfg.capability_limit:
            return
        path = out / "capabilities" / f"{run_name}.json"
        if path.is_file():
            old = read_json(path)
            same = old.get("adapter_sha256") == (adapter_sha256(lora) if lora else None)
            if same and old.get("limit") == cfg.capability_limit:
                log.info("step: capabilities of %s already measured, reused", run_name)
                return
        log.info(
            "step: capability task (lm-eval, %d questions) for %s", cfg.capability_limit, run_name
        )
        evaluate_capabilities(
            cfg.base_model,
            lora,
            output_dir=out / "capabilities",
            run_name=run_name,
            limit=cfg.capability_limit,
            device="cpu",
            overwrite=True,
            flags={"demo": asdict(cfg)},
        )

    def train_one(method: str, n: int, seed: int, mixture: Path, init: Path | None) -> str:
        """Train (or reuse) one adapter, generate and measure with it; returns its run name."""
        # one seed keeps the historical name (its adapter is reused); several get a suffix
        run_name = derive_run_name(
            cfg.num_safety,
            n,
            cfg.task,
            "smollm2",
            seed=seed if len(cfg.seeds) > 1 else None,
            method=method,
            from_sft=init is not None,
        )
        ckpt = Path(cfg.checkpoint_dir) / run_name
        batch = cfg.dpo_micro_batch_size if method == "dpo" else cfg.micro_batch_size
        steps = (cfg.dpo_steps or cfg.max_steps) if method == "dpo" else cfg.max_steps
        tcfg = TrainConfig(
            base_model=cfg.base_model,
            data_path=str(mixture),
            output_dir=str(ckpt),
            batch_size=batch,
            micro_batch_size=batch,
            max_steps=steps,
            learning_rate=cfg.dpo_learning_rate if method == "dpo" else cfg.learning_rate,
            cutoff_len=cfg.cutoff_len,
            val_set_size=0,
            lora_r=cfg.lora_r,
            lora_alpha=cfg.lora_alpha,
            lora_target_modules=tuple(cfg.lora_target_modules),
            prompt_template_name=cfg.prompt_template,
            seed=seed,
            save_steps=10_000,
            warmup_steps=3,
            logging_steps=5,
            group_by_length=True,
            overwrite=True,
            method=method,
            beta=cfg.beta,
            sft_weight=cfg.sft_weight,
            resume_from_checkpoint=str(init) if init else None,
        )
        if trained_same_way(ckpt, tcfg):
            log.info("step: %s already trained the same way, reused", run_name)
        else:
            log.info("step: train %s (%s, %d steps)", run_name, method, steps)
            train(tcfg, {"demo": asdict(cfg)})
        generate(run_name, str(ckpt), evals, gen_dir)
        capabilities(run_name, str(ckpt))
        return run_name

    def dpo_pairs(policy_run: str, lora: str | None, into: Path) -> list[Path]:
        """Pairs whose rejected side is `policy_run`'s own answers to the refusal prompts."""
        [prompts] = build_defense_data(**{**mixture_args, "output_dir": into}, format="prompts")
        onpolicy = out / "data" / "onpolicy"
        generate(policy_run, lora, [prompts], onpolicy)
        answers = onpolicy / policy_run / f"{prompts.stem}.json"
        return build_defense_data(
            **{**mixture_args, "output_dir": into}, format="dpo", rejected_path=answers
        )

    generate("base", None, evals, gen_dir)
    capabilities("base", None)
    runs = ["base"]
    grid = sorted(cfg.numbers)
    # the rejected side is the base model's own answers, i.e. the behaviour the defense removes,
    # also for DPO from an SFT adapter: that adapter already refuses the harmful prompts, so its
    # own answers would leave almost only anti-refusal pairs (measured: README, Defense methods)
    dpo_paths = dpo_pairs("base", None, out / "data") if "dpo" in cfg.methods else []
    if "sft" in cfg.methods:
        sft_paths = build_defense_data(**mixture_args)
        for (n, mixture), seed in product(zip(grid, sft_paths, strict=True), cfg.seeds):
            runs.append(train_one("sft", n, seed, mixture, None))
            if "dpo" in cfg.methods and cfg.dpo_init == "sft":
                ckpt = Path(cfg.checkpoint_dir) / runs[-1]
                runs.append(train_one("dpo", n, seed, dpo_paths[grid.index(n)], ckpt))
    if "dpo" in cfg.methods and cfg.dpo_init == "base":
        for (n, mixture), seed in product(zip(grid, dpo_paths, strict=True), cfg.seeds):
            runs.append(train_one("dpo", n, seed, mixture, None))

    log.info("step: score and report")
    # exactly this configuration's outputs: runs or eval files of an earlier demo in the same
    # folder (another method, seed or eval set) are not reported as if they were part of it
    made = [str(gen_dir / run / f"{e.stem}.json") for run in runs for e in evals]
    score_paths(made, out / "scores", cfg.judges, overwrite=True, flags={"demo": asdict(cfg)})
    caps = [str(out / "capabilities" / f"{r}.json") for r in runs] if cfg.capability_limit else None
    make_report(str(out / "scores" / "summary.json"), out, overwrite=True, capabilities_path=caps)
    (out / "report.md").write_text(
        "# Miniature cross-task defense on SmolLM2-135M-Instruct\n\n"
        f"Made by `make demo` with:\n\n```json\n{dump_config(cfg)}\n```\n\n"
        + (out / "results.md").read_text(encoding="utf-8"),
        encoding="utf-8",
    )
    return out


def dump_config(cfg: DemoConfig) -> str:
    return json.dumps(asdict(cfg), indent=1)
