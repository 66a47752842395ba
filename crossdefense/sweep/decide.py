"""What each stage will do, decided once from what is on disk; the plan and the runner both
print or run these decisions and never decide on their own.

Resumability rests on two markers per stage directory (`checkpoints/<run>/`,
`<generations>/<run>/`), both JSON holding a hash of everything the stage's output depends on:
`started` is written before the stage runs, `done` after it succeeded. A stage is skipped when
its outputs and a `done` marker with the current hash exist. Outputs found beside a `started`
marker with the current hash were made under the current settings, so an interrupted stage
resumes (training from its last trainer checkpoint, generation from the eval files and JSONL
records it had finished); outputs under another hash are deleted before the stage starts over.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_json, sha256_file, write_json
from crossdefense.paths import REPO_ROOT
from crossdefense.runs import manifest_path, mixture_name, output_paths
from crossdefense.stages import fingerprint
from crossdefense.sweep.cells import Cell, cell_paths, cells, train_launcher
from crossdefense.sweep.config import (
    BUILD_SCRIPT,
    CAPABILITIES_SCRIPT,
    GENERATE_SCRIPT,
    REPORT_SCRIPT,
    SCORE_SCRIPT,
    TRAIN_SCRIPT,
    SweepConfig,
    _rel,
    build_seed,
    flag_values,
    python,
    script,
)

STARTED, DONE = "started", "done"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "prompt_template.json")
TRAINED_FILES = ("adapter_config.json", "adapter_model.safetensors", "run_config.json")


@dataclass
class Decision:
    """What a stage will do. `action`: skip, run, resume, mark (outputs complete, only the done
    marker is missing) or error (cannot run, `reason` says why)."""

    stage: str
    action: str
    reason: str
    config: dict[str, Any] = field(default_factory=dict)
    command: list[str] = field(default_factory=list)
    remove: list[Path] = field(default_factory=list)  # stale outputs deleted before running

    @property
    def runs(self) -> bool:
        return self.action in ("run", "resume")


# --------------------------------------------------------------------------- markers and hashes


config_hash = fingerprint  # the marker's name for the one fingerprint (crossdefense.stages)


def _sha(path: Path) -> str | None:
    return sha256_file(path) if path.is_file() else None


def merge_flags(base: Sequence[str], over: Sequence[str]) -> list[str]:
    """`base` without the flags `over` sets (each with its values), then `over`."""

    def name(arg: str) -> str | None:
        return arg[2:].split("=", 1)[0] if arg.startswith("--") else None

    replaced = {name(a) for a in over} - {None}
    out: list[str] = []
    dropping = False
    for arg in base:
        if name(arg) is not None:
            dropping = name(arg) in replaced
        if not dropping:
            out.append(arg)
    return [*out, *over]


def cell_train_args(cfg: SweepConfig, cell: Cell) -> list[str]:
    """TRAIN_ARGS, and for a dpo cell DPO_ARGS over them."""
    if cell.method == "dpo":
        return merge_flags(cfg.train_args, [*cfg.dpo_args, "--method", "dpo"])
    return list(cfg.train_args)


def train_config(cfg: SweepConfig, cell: Cell) -> dict[str, Any]:
    """What an adapter depends on. The data (and a from_sft cell's starting adapter) count by
    content, not by path."""
    mixture = cell_paths(cfg, cell).mixture
    return {
        "base_model": cell.model.path,
        "template": cell.model.template,
        "data_sha256": _sha(mixture),
        "train_args": cell_train_args(cfg, cell),
        **({"seed": cell.seed} if cell.seed is not None else {}),
        **({"init": adapter_digest(cfg, cell.sft_cell())} if cell.from_sft else {}),
    }


def adapter_digest(cfg: SweepConfig, cell: Cell) -> dict[str, Any] | None:
    """A cell's adapter by content (None for an untrained cell): a retrained but identical
    adapter keeps what was made with it."""
    if not cell.trained:
        return None
    ckpt = cell_paths(cfg, cell).checkpoint
    return {name: _sha(ckpt / name) for name in ADAPTER_FILES}


def generate_config(cfg: SweepConfig, cell: Cell) -> dict[str, Any]:
    """What the generations depend on: the adapter, the eval files by content, the decoding
    flags (and, untrained, the prompt template)."""
    return {
        "base_model": cell.model.path,
        "adapter": adapter_digest(cfg, cell),
        **({} if cell.trained else {"template": cell.model.template}),
        "eval_files": cfg.eval_digests(),
        "gen_args": cfg.gen_args,
    }


def capabilities_config(cfg: SweepConfig, cell: Cell) -> dict[str, Any]:
    return {
        "base_model": cell.model.path,
        "adapter": adapter_digest(cfg, cell),
        "capability_args": cfg.capability_args,
    }


def _untrained_adapter(cfg: SweepConfig, cell: Cell) -> str | None:
    """Why a trained cell cannot use its adapter yet (None: it can)."""
    ckpt = cell_paths(cfg, cell).checkpoint
    if cell.trained and not all((ckpt / f).is_file() for f in TRAINED_FILES):
        return f"no trained adapter in {ckpt}"
    return None


def read_marker(directory: Path, name: str) -> dict[str, Any] | None:
    path = directory / name
    if not path.is_file():
        return None
    try:
        marker = read_json(path)
    except UserError:
        return None  # a torn or hand-edited marker only means "not done"
    return marker if isinstance(marker, dict) else None


def write_marker(directory: Path, name: str, config: Mapping[str, Any], **extra: Any) -> None:
    write_json(
        directory / name,
        {
            "config_hash": config_hash(config),
            "config": config,
            "date": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **extra,
        },
    )


def _changed(marker: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    old = marker.get("config") or {}
    keys = sorted(k for k in set(old) | set(config) if old.get(k) != config.get(k))
    return ", ".join(keys) or "settings"


def is_current(marker: Mapping[str, Any] | None, config: Mapping[str, Any]) -> bool:
    return marker is not None and marker.get("config_hash") == config_hash(config)


def latest_checkpoint(directory: Path) -> Path | None:
    """The trainer checkpoint with the highest step that can be resumed from."""
    found = []
    for p in directory.glob("checkpoint-*"):
        step = p.name.removeprefix("checkpoint-")
        if step.isdigit() and (p / "trainer_state.json").is_file():
            found.append((int(step), p))
    return max(found)[1] if found else None


# --------------------------------------------------------------------------- cell stages


def decide_train(cfg: SweepConfig, cell: Cell, gpu: str | None = None) -> Decision:
    if not cell.trained:
        return Decision("train", "skip", "the model untrained: nothing to train")
    paths = cell_paths(cfg, cell)
    config = train_config(cfg, cell)
    ckpt = paths.checkpoint
    command = [
        *train_launcher(gpu),
        script(TRAIN_SCRIPT),
        "--base_model",
        cell.model.path,
        "--data_path",
        str(paths.mixture),
        "--output_dir",
        str(ckpt),
        "--prompt_template_name",
        cell.model.template,
        *(["--seed", str(cell.seed)] if cell.seed is not None else []),
        *cell_train_args(cfg, cell),
    ]
    init = cell_paths(cfg, cell.sft_cell()).checkpoint if cell.from_sft else None
    trained = all((ckpt / f).is_file() for f in TRAINED_FILES)
    if config["data_sha256"] is None:
        how = " (preference pairs: scripts/build_defense_data.py --format dpo)"
        why = f"mixture {paths.mixture} not found" + (how if cell.method == "dpo" else "")
        return Decision("train", "error", why, config, command)
    if init is not None:
        missing = _untrained_adapter(cfg, cell.sft_cell())
        if missing:
            return Decision("train", "error", f"{missing} to start DPO from", config, command)
    done = read_marker(ckpt, DONE)
    if trained and is_current(done, config):
        return Decision("train", "skip", "done, settings unchanged", config)
    started = read_marker(ckpt, STARTED)
    if is_current(started, config):
        if trained:
            return Decision("train", "mark", "adapter complete, marking done", config)
        last = latest_checkpoint(ckpt)
        if last is not None:
            resume = [*command, "--resume_from_checkpoint", str(last)]
            return Decision("train", "resume", f"interrupted: resuming {last.name}", config, resume)
        reason = "interrupted before its first checkpoint: starting over"
    elif done is not None or started is not None:
        reason = f"settings changed ({_changed(done or started or {}, config)}): starting over"
    elif trained:
        reason = "adapter from outside the sweep: starting over"
    else:
        reason = "not trained yet"
    if init is not None:
        command += ["--resume_from_checkpoint", str(init)]  # the SFT adapter, as its start
    stale = [p for p in ckpt.glob("checkpoint-*") if p.is_dir()]
    stale += [ckpt / f for f in (*TRAINED_FILES, "prompt_template.json", DONE)]
    return Decision("train", "run", reason, config, command, [p for p in stale if p.exists()])


def generation_outputs(cfg: SweepConfig, cell: Cell) -> dict[str, tuple[Path, Path]]:
    """eval stem -> (final JSON, resumable JSONL), as crossdefense.generation names them."""
    out = {}
    for p in cfg.eval_files():
        paths = output_paths(cfg.generations_dir, cell.run_name, p)
        out[p.stem] = (paths.final, paths.jsonl)
    return out


def decide_generate(cfg: SweepConfig, cell: Cell, gpu: str | None = None) -> Decision:
    paths = cell_paths(cfg, cell)
    ckpt, run_dir = paths.checkpoint, paths.generations

    # an adapter carries its template; the model alone is told which one to use
    if cell.trained:
        model = ["--lora_weights", str(ckpt)]
    else:
        model = ["--prompt_template_path", cell.model.template]

    def command(files: Sequence[Path]) -> list[str]:
        return [
            python(),
            script(GENERATE_SCRIPT),
            "--input_path",
            ",".join(str(f) for f in files),
            "--output_path",
            str(cfg.generations_dir),
            "--base_model",
            cell.model.path,
            *model,
            "--run_name",
            cell.run_name,
            *cfg.gen_args,
        ]

    files = cfg.eval_files()
    missing = _untrained_adapter(cfg, cell)
    if missing:
        return Decision("generate", "error", missing, {}, command(files))
    config = generate_config(cfg, cell)
    outputs = generation_outputs(cfg, cell)
    finished = [f for f in files if outputs[f.stem][0].is_file()]
    done = read_marker(run_dir, DONE)
    if len(finished) == len(files) and is_current(done, config):
        return Decision("generate", "skip", "done, settings unchanged", config)
    started = read_marker(run_dir, STARTED)
    if is_current(started, config):
        todo = [f for f in files if f not in finished]
        if not todo:
            return Decision("generate", "mark", "outputs complete, marking done", config)
        partial = sum(outputs[f.stem][1].is_file() for f in todo)
        reason = f"interrupted: resuming {len(todo)} of {len(files)} eval files"
        reason += f" ({partial} partly done)" if partial else ""
        return Decision("generate", "resume", reason, config, command(todo))
    if done is not None or started is not None:
        reason = f"settings changed ({_changed(done or started or {}, config)}): starting over"
    else:
        reason = "not generated yet"
    stale = [p for pair in outputs.values() for p in pair if p.exists()]
    stale += [run_dir / DONE] if (run_dir / DONE).exists() else []
    return Decision("generate", "run", reason, config, command(files), stale)


def decide_capabilities(cfg: SweepConfig, cell: Cell, gpu: str | None = None) -> Decision:
    """lm-eval's capability task (scripts/eval_capabilities.py) on the cell's model; the
    result file is redone when the adapter or CAPABILITY_ARGS changed."""
    if not cfg.capabilities:
        return Decision("capabilities", "skip", "CAPABILITIES=no")
    paths = cell_paths(cfg, cell)
    result = paths.capability_file
    given = flag_values(cfg.capability_args)
    command = [
        python(),
        script(CAPABILITIES_SCRIPT),
        "--base_model",
        cell.model.path,
        *(["--lora_weights", str(paths.checkpoint)] if cell.trained else []),
        "--output_dir",
        str(paths.capabilities),
        "--run_name",
        cell.run_name,
        *(["--device", "cpu"] if gpu == "cpu" and "device" not in given else []),
        *cfg.capability_args,
    ]
    missing = _untrained_adapter(cfg, cell)
    if missing:
        return Decision("capabilities", "error", missing, {}, command)
    config = capabilities_config(cfg, cell)
    done = read_marker(paths.capabilities, DONE)
    if result.is_file() and is_current(done, config):
        return Decision("capabilities", "skip", "done, settings unchanged", config)
    if result.is_file() and is_current(read_marker(paths.capabilities, STARTED), config):
        return Decision("capabilities", "mark", "result complete, marking done", config)
    if done is not None:
        reason = f"settings changed ({_changed(done, config)}): measuring again"
    else:
        reason = "not measured yet"
    stale = [p for p in (result, paths.capabilities / DONE) if p.exists()]
    return Decision("capabilities", "run", reason, config, command, stale)


_DECIDERS = {
    "train": decide_train,
    "generate": decide_generate,
    "capabilities": decide_capabilities,
}


def decide(cfg: SweepConfig, cell: Cell, stage: str, gpu: str | None = None) -> Decision:
    """The decision for one cell stage; a configuration problem (e.g. no eval file) becomes an
    `error` decision, so one broken cell never stops the others."""
    if stage not in _DECIDERS:
        raise UserError(f"unknown cell stage {stage!r}; expected {', '.join(_DECIDERS)}")
    try:
        return _DECIDERS[stage](cfg, cell, gpu)
    except UserError as e:
        return Decision(stage, "error", str(e))


# --------------------------------------------------------------------------- build, score, report


def mixture_path(cfg: SweepConfig, task: str, n: int) -> Path:
    return cfg.data_dir / task / mixture_name(cfg.num_safety, n, task)


def missing_mixtures(cfg: SweepConfig, task: str) -> list[int]:
    """The Ns of `task` whose mixture is not there (the N=0 baseline belongs to the first task)."""
    ns = [n for n in cfg.numbers if n > 0 or task == cfg.tasks[0]]
    return [n for n in ns if not mixture_path(cfg, task, n).is_file()]


def stale_mixtures(cfg: SweepConfig, task: str) -> dict[int, str]:
    """{N: why} for mixtures that are there but were built otherwise than this sweep would
    build them (their manifest records the seed, K and each source file's sha256)."""
    sources = {
        "alpaca": cfg.alpaca_path,
        "safety": cfg.safety_path,
        "documents": cfg.documents_path,
        "refusals": cfg.refusals_path,
        "benign_documents": cfg.benign_documents,
    }
    seed = build_seed(cfg.build_args)
    # each source is hashed once, not once per N
    hashes = {k: sha256_file(Path(g)) for k, g in sources.items() if g and Path(g).is_file()}
    out: dict[int, str] = {}
    for n in cfg.numbers:
        path = mixture_path(cfg, task, n)
        manifest = manifest_path(path)
        if not path.is_file() or not manifest.is_file():
            continue
        try:
            m = read_json(manifest)
        except UserError:
            out[n] = "its manifest cannot be read"
            continue
        recorded_flags = (m.get("provenance") or {}).get("flags") or {}
        changed = [
            f"--{k} {recorded_flags[k]} -> {v}"
            for k, v in flag_values(cfg.build_args).items()
            if v is not None and k != "seed" and str(recorded_flags.get(k, v)) != v
        ]
        if seed is not None and m.get("seed") != seed:
            out[n] = f"seed {m.get('seed')} -> {seed}"
        elif changed:
            out[n] = f"BUILD_ARGS {', '.join(changed)}"
        elif m.get("num_safety") != cfg.num_safety:
            out[n] = f"NUM_SAFETY {m.get('num_safety')} -> {cfg.num_safety}"
        else:
            for key, digest in hashes.items():
                recorded = ((m.get("sources") or {}).get(key) or {}).get("sha256")
                if recorded and digest != recorded:
                    out[n] = f"{key} file changed ({sources[key]})"
                    break
    return out


def build_command(cfg: SweepConfig, task: str, ns: Sequence[int], *extra: str) -> list[str]:
    """scripts/build_defense_data.py for `task` and the Ns `ns`, from the sweep's inputs and
    BUILD_ARGS (`extra` after them: e.g. --format dpo for preference pairs)."""
    command = [
        python(),
        script(BUILD_SCRIPT),
        "--task",
        task,
        f"--grid={','.join(map(str, ns))}",
        "--num_safety",
        str(cfg.num_safety),
        "--alpaca_path",
        cfg.alpaca_path,
        "--safety_path",
        cfg.safety_path,
        "--output_dir",
        str(cfg.data_dir / task),
    ]
    if max(ns) > 0:
        command += ["--documents_path", cfg.documents_path]
        command += ["--refusals_path", cfg.refusals_path]
    if cfg.benign_documents:
        command += ["--benign_documents_path", cfg.benign_documents]
    if cfg.eval_dir.is_dir():
        command += ["--eval_dir", str(cfg.eval_dir)]  # the leakage check
    return [*command, *cfg.build_args, *extra]


def build_decisions(cfg: SweepConfig) -> list[tuple[str, Decision]]:
    """One mixture build per task, for the Ns whose mixture is missing or was built otherwise
    (another seed, K or source file: rebuilt with --overwrite, so their cells retrain); nested
    sampling makes building a subset of the grid give the same files as building all of it."""
    out = []
    for task in cfg.tasks:
        stale = stale_mixtures(cfg, task)
        missing = sorted(set(missing_mixtures(cfg, task)) | set(stale))
        if not missing:
            out.append((task, Decision("build", "skip", "all mixtures present")))
            continue
        if max(missing) > 0 and not (cfg.documents_path and cfg.refusals_path):
            reason = (
                f"N={','.join(map(str, missing))} missing and DOCUMENTS_PATH/REFUSALS_PATH are "
                "not set: those cells will fail"
            )
            out.append((task, Decision("build", "error", reason)))
            continue
        command = build_command(cfg, task, missing)
        reason = f"building N={','.join(map(str, missing))}"
        if stale:
            command.append("--overwrite")
            why = "; ".join(f"N={n}: {w}" for n, w in sorted(stale.items()))
            reason += f" (rebuilt, made otherwise: {why})"
        out.append((task, Decision("build", "run", reason, command=command)))
    return out


def score_decision(cfg: SweepConfig) -> Decision:
    """Score every finished cell of the sweep into SCORES_DIR (again only when a generation
    or SCORE_ARGS changed)."""
    score_script = REPO_ROOT / SCORE_SCRIPT
    if not score_script.is_file():
        return Decision("score", "skip", "scripts/score_answers.py not found")
    # exactly this sweep's outputs: an eval file or run of another sweep configuration that
    # shares the folders is not scored as if it were part of this one
    outputs = [
        final
        for c in cells(cfg)
        if read_marker(cell_paths(cfg, c).generations, DONE) is not None
        for final, _ in generation_outputs(cfg, c).values()
        if final.is_file()
    ]
    if not outputs:
        return Decision("score", "skip", "no finished generations")
    config = {
        "generations": {f"{p.parent.name}/{p.name}": sha256_file(p) for p in outputs},
        "score_args": cfg.score_args,
    }
    summary = cfg.scores_dir / "summary.json"
    if summary.is_file() and is_current(read_marker(cfg.scores_dir, DONE), config):
        return Decision("score", "skip", "done, generations unchanged", config)
    command = [
        python(),
        _rel(score_script),
        "--input_path",
        ",".join(str(p) for p in outputs),
        "--output_dir",
        str(cfg.scores_dir),
        *cfg.score_args,
    ]
    if summary.exists() or (cfg.scores_dir / "scores.jsonl").exists():
        command.append("--overwrite")
    runs = len({p.parent for p in outputs})
    return Decision("score", "run", f"{runs} finished cells", config, command)


def report_decision(cfg: SweepConfig) -> Decision:
    report_script = REPO_ROOT / REPORT_SCRIPT
    summary = cfg.scores_dir / "summary.json"
    if not report_script.is_file():
        return Decision("report", "skip", "scripts/report.py not found")
    if not summary.is_file():
        return Decision("report", "skip", f"no {summary} yet")
    capabilities = [
        cell_paths(cfg, c).capability_file
        for c in cells(cfg)
        if cfg.capabilities and read_marker(cell_paths(cfg, c).capabilities, DONE) is not None
    ]
    config = {
        "summary_sha256": sha256_file(summary),
        "report_args": cfg.report_args,
        **(
            {"capabilities": {p.stem: sha256_file(p) for p in capabilities}} if capabilities else {}
        ),
    }
    if is_current(read_marker(cfg.report_dir, DONE), config):
        return Decision("report", "skip", "done, scores unchanged", config)
    command = [
        python(),
        _rel(report_script),
        "--summary_path",
        str(summary),
        "--output_dir",
        str(cfg.report_dir),
        *(["--capabilities_path", ",".join(map(str, capabilities))] if capabilities else []),
        *cfg.report_args,
    ]
    if cfg.report_dir.is_dir() and any(p.name != DONE for p in cfg.report_dir.iterdir()):
        command.append("--overwrite")
    return Decision("report", "run", "scores changed", config, command)


def step_decisions(cfg: SweepConfig, step: str) -> list[tuple[str, str, Decision]]:
    """The sweep-wide steps as (log name, what, decision): one build per task, one score,
    one report."""
    if step == "build":
        return [(f"build.{task}", task, d) for task, d in build_decisions(cfg)]
    if step == "score":
        return [("score", "", score_decision(cfg))]
    if step == "report":
        return [("report", "", report_decision(cfg))]
    raise UserError(f"unknown sweep step {step!r}; expected build, score or report")
