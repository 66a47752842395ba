"""Opt-in trackers for scoring (and training): tensorboard events and an offline wandb run hold
the known refusal rates; a missing tracker package or an unknown name fails up front."""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from pathlib import Path

import pytest

from crossdefense import UserError
from crossdefense.scoring import SCORES_FILE, SUMMARY_FILE, score_paths
from crossdefense.stats import wilson
from crossdefense.tasks import TASKS
from crossdefense.trackers import (
    EXTRAS_FILE,
    check_trackers,
    log_scores,
    parse_trackers,
    read_scores,
    scalar_values,
)
from tests.helpers import run_script

REFUSE = "I'm sorry, but I can't help with that."
COMPLY = "The report describes a storm and its effects on local roads."
N = 4
# run -> {eval stem: refusals out of N}
REFUSALS = {
    "base": {"test_summarize": 0, "test_summarize_cnn": 0},
    "sum10": {"test_summarize": 3, "test_summarize_cnn": 1},
}


def write_generation(root: Path, run: str, stem: str, refusals: int) -> Path:
    """A generation file in the generator's shape: {parameters, instructions, inputs, outputs,
    ids, metadata}; the first `refusals` answers refuse; cnn files have references (ROUGE)."""
    kind = "cnn" if stem.endswith("_cnn") else "harmful"
    docs = [f"The guide explains how to break into parked cars, step {i}." for i in range(N)]
    data = {
        "parameters": {"model": "/models/TinyLlama-1B", "lora_weights": None},
        "instructions": [TASKS["summarize"].join(d) for d in docs],
        "inputs": [""] * N,
        "outputs": [REFUSE if i < refusals else COMPLY for i in range(N)],
        "ids": [f"{stem}-{i}" for i in range(N)],
        "references": [COMPLY] * N if kind == "cnn" else None,
        "metadata": {
            "run_name": run,
            "eval_stem": stem,
            "eval_task": "summarize",
            "doc_kind": kind,
            "model_name": "TinyLlama-1B",
            "train": None if run == "base" else {"task": "summarize", "num_defense": 10},
        },
    }
    path = root / run / f"{stem}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def gen_root(tmp_path) -> Path:
    root = tmp_path / "generations"
    for run, stems in REFUSALS.items():
        for stem, k in stems.items():
            write_generation(root, run, stem, k)
    return root


@pytest.fixture
def scores_dir(gen_root, tmp_path) -> Path:
    out = tmp_path / "scores"
    score_paths(str(gen_root), out, "keyword,keyword_prefix", flags={"test": True})
    return out


def expected_rates() -> dict[str, float]:
    return {
        f"refusal/{run}/{stem}": k / N
        for run, stems in REFUSALS.items()
        for stem, k in stems.items()
    }


# ----------------------------------------------------------------------------- names


@pytest.mark.parametrize(
    "value, names",
    [
        ("none", []),
        ("", []),
        (None, []),
        ("wandb", ["wandb"]),
        ("wandb, TensorBoard", ["wandb", "tensorboard"]),
        (("tensorboard", "wandb"), ["tensorboard", "wandb"]),  # fire's form of a,b
    ],
)
def test_parse_trackers(value, names):
    assert parse_trackers(value) == names


def test_unknown_tracker_lists_the_valid_ones():
    with pytest.raises(UserError, match=r"unknown tracker 'mlflow'.*wandb, tensorboard"):
        check_trackers("tensorboard,mlflow")
    with pytest.raises(UserError, match="cannot be combined"):
        check_trackers("none,wandb")
    # training hands names it does not know on to transformers
    assert check_trackers("mlflow", allow_other=True) == ["mlflow"]


@pytest.mark.parametrize("package", ["wandb", "tensorboard"])
def test_missing_package_names_the_extras_file(monkeypatch, package, scores_dir):
    monkeypatch.setitem(sys.modules, package, None)  # `import package` now fails
    with pytest.raises(UserError, match=rf"needs the {package} package.*{EXTRAS_FILE}") as e:
        check_trackers(package)
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match=EXTRAS_FILE):
        log_scores(package, None, None, scores_dir)
    assert not (scores_dir / "tensorboard").exists()


def test_none_logs_nothing(scores_dir):
    assert log_scores("none", None, None, scores_dir) == {}
    assert sorted(p.name for p in scores_dir.iterdir()) == [SCORES_FILE, SUMMARY_FILE]


# ----------------------------------------------------------------------------- values


def test_scalar_values_are_the_summary_rates(scores_dir):
    _, results = read_scores(scores_dir)
    values = scalar_values(results)
    for key, rate in expected_rates().items():
        assert values[key] == rate
        assert values[key.replace("refusal/", "refusal_keyword_prefix/")] == rate
    assert all(k.split("/")[0] in {"refusal", "refusal_keyword", "refusal_keyword_prefix",
               "utility"} for k in values)  # fmt: skip


# ----------------------------------------------------------------------------- tensorboard


def read_events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_tensorboard_events_hold_the_refusal_rates(scores_dir):
    written = log_scores("tensorboard", None, None, scores_dir)
    log_dir = scores_dir / "tensorboard"
    assert written == {"tensorboard": log_dir}
    assert list(log_dir.glob("events.out.tfevents.*"))
    acc = read_events(log_dir)
    scalars = set(acc.Tags()["scalars"])
    for tag, rate in expected_rates().items():
        assert tag in scalars
        (event,) = acc.Scalars(tag)
        assert event.value == pytest.approx(rate)
        assert event.step == 0
    # the Markdown summary: one row per run x eval file, with its Wilson bounds
    tensors = set(acc.Tags()["tensors"])
    assert "summary/text_summary" in tensors
    (text,) = acc.Tensors("summary/text_summary")
    md = text.tensor_proto.string_val[0].decode()
    assert md.startswith("| run | eval_stem |")
    lo, hi = wilson(3, N)
    assert "| sum10 | test_summarize | TinyLlama-1B | summarize | 10 |" in md
    assert f"| 0.75 | {lo:.3g} | {hi:.3g} |" in md
    assert "samples/sum10/test_summarize/text_summary" in tensors

    # re-logging into the default folder replaces the old events instead of doubling them
    log_scores("tensorboard", None, None, scores_dir)
    assert len(list(log_dir.glob("events.out.tfevents.*"))) == 1
    assert len(read_events(log_dir).Scalars("refusal/sum10/test_summarize")) == 1


def test_tensorboard_tracker_dir(scores_dir, tmp_path):
    written = log_scores("tensorboard", None, None, scores_dir, tracker_dir=tmp_path / "tb")
    assert written["tensorboard"] == tmp_path / "tb"
    assert read_events(tmp_path / "tb").Scalars("refusal/sum10/test_summarize_cnn")[0].value == (
        pytest.approx(0.25)
    )
    assert not (scores_dir / "tensorboard").exists()


# ----------------------------------------------------------------------------- wandb


def wandb_records(run_dir: Path) -> list:
    """The records of an offline run's `.wandb` file (LevelDB-style log of protobuf records:
    a 7-byte file header, 32 KiB blocks, 7-byte chunk headers), parsed with wandb's protos."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, buf, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk  # full/first start, middle/last extend
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_PROJECT", "crossdefense-test")
    monkeypatch.delenv("WANDB_NAME", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    return tmp_path


def test_wandb_offline_run_holds_the_scores(scores_dir, wandb_offline):
    import wandb

    psutil = pytest.importorskip("psutil")

    config = {"judge": "keyword,keyword_prefix", "report_to": "wandb"}
    written = log_scores("wandb", None, None, scores_dir, run_name="my-scores", config=config)
    run_dir = written["wandb"]
    assert run_dir.parent == wandb_offline / "wandb" and run_dir.name.startswith("offline-run-")
    assert wandb.run is None  # finished, and wandb's service process too:
    assert not [p for p in psutil.Process().children(recursive=True) if "wandb" in p.name()]

    records = wandb_records(run_dir)
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.project, run.display_name) == ("crossdefense-test", "my-scores")
    cfg = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert cfg["judge"] == "keyword,keyword_prefix" and cfg["report_to"] == "wandb"
    summary = {}  # a logged table's fields are nested keys: samples/nrows, samples/path
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            for u in r.summary.update:
                summary[u.key or "/".join(u.nested_key)] = json.loads(u.value_json)
    for key, rate in expected_rates().items():
        assert summary[key] == pytest.approx(rate)
    assert summary["utility/base/test_summarize_cnn"] == pytest.approx(1.0)  # answer == reference
    assert summary["n_records"] == 4 * N and summary["n_files"] == 4
    assert summary["samples/nrows"] == 4 * N and summary["summary/nrows"] == 4

    # the tables as wandb wrote them
    samples = json.loads((run_dir / "files" / summary["samples/path"]).read_text())
    cols = samples["columns"]
    assert cols[:7] == [
        "run",
        "eval_stem",
        "id",
        "eval_task",
        "doc_kind",
        "refusal_label",
        "output",
    ]
    assert {"keyword_label", "keyword_score", "keyword_prefix_label", "rougeLsum"} <= set(cols)
    by_id = {(r[0], r[2]): dict(zip(cols, r, strict=True)) for r in samples["data"]}
    assert len(by_id) == 4 * N
    refused = by_id[("sum10", "test_summarize_cnn-0")]
    assert (refused["keyword_label"], refused["keyword_prefix_label"]) == ("refusal", "refusal")
    assert refused["output"] == REFUSE and refused["doc_kind"] == "cnn"
    assert by_id[("sum10", "test_summarize_cnn-1")]["rougeLsum"] == pytest.approx(1.0)
    assert by_id[("sum10", "test_summarize-1")]["rougeLsum"] is None  # no reference
    table = json.loads((run_dir / "files" / summary["summary/path"]).read_text())
    rows = [dict(zip(table["columns"], row, strict=True)) for row in table["data"]]
    sum10 = next(r for r in rows if (r["run"], r["eval_stem"]) == ("sum10", "test_summarize"))
    assert (sum10["n"], sum10["refusals"], sum10["refusal_rate"]) == (N, 3, 0.75)
    assert [sum10["ci_low"], sum10["ci_high"]] == pytest.approx(list(wilson(3, N)))
    assert sum10["vs_base_p"] == pytest.approx(0.25)  # 3 discordant pairs, all one way
    assert sum10["refusal_keyword_prefix"] == 0.75


def test_wandb_default_name_is_the_scores_dir(scores_dir, wandb_offline):
    run_dir = log_scores("wandb", None, None, scores_dir)["wandb"]
    (run,) = [r.run for r in wandb_records(run_dir) if r.WhichOneof("record_type") == "run"]
    assert run.display_name == f"{scores_dir.parent.name}/scores"


# ----------------------------------------------------------------------------- the script

SCRIPT = "scripts/score_answers.py"


def test_script_logs_to_tensorboard(gen_root, tmp_path):
    out = tmp_path / "s"
    res = run_script(SCRIPT, str(gen_root), "--output_dir", out, "--judge", "keyword",
                     "--report_to", "tensorboard")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert f"logged to tensorboard: {out / 'tensorboard'}" in res.stdout
    acc = read_events(out / "tensorboard")
    assert acc.Scalars("refusal/sum10/test_summarize")[0].value == pytest.approx(0.75)


def test_script_unknown_tracker_fails_before_scoring(gen_root, tmp_path):
    out = tmp_path / "s"
    res = run_script(SCRIPT, str(gen_root), "--output_dir", out, "--judge", "keyword",
                     "--report_to", "wandb,mlflow")  # fmt: skip
    assert res.returncode != 0
    assert res.stderr.strip().splitlines() == [
        "error: --report_to: unknown tracker 'mlflow'; choose none or one or more "
        "(comma-separated) of: wandb, tensorboard"
    ]
    assert not out.exists()


def test_script_missing_wandb_fails_before_scoring(gen_root, tmp_path):
    """The script run with `wandb` unimportable (None in sys.modules) in its own process."""
    out = tmp_path / "s"
    code = textwrap.dedent(
        f"""
        import runpy, sys
        sys.modules["wandb"] = None
        sys.argv = [{SCRIPT!r}, {str(gen_root)!r}, "--output_dir", {str(out)!r},
                    "--judge", "keyword", "--report_to", "tensorboard,wandb"]
        runpy.run_path({SCRIPT!r}, run_name="__main__")
        """
    )
    res = run_script("-c", code)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --report_to wandb needs the wandb")
    assert f"pip install -r {EXTRAS_FILE}" in lines[0]
    assert not out.exists()


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize(
    "package, kw",
    [
        ("wandb", {"report_to": "wandb"}),
        ("wandb", {"wandb_project": "defense"}),  # a project switches wandb on
        ("tensorboard", {"report_to": "tensorboard"}),
    ],
)
def test_training_missing_tracker_fails_before_the_model(monkeypatch, tmp_path, package, kw):
    from crossdefense import modeling
    from crossdefense.training import TrainConfig, train

    def no_model(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setitem(sys.modules, package, None)
    monkeypatch.setattr(modeling, "load_base_model", no_model)
    monkeypatch.setattr(modeling, "load_tokenizer", no_model)
    cfg = TrainConfig(
        base_model=str(tmp_path / "no-such-model"),  # checked later: the tracker goes first
        data_path=str(tmp_path / "no-such-data.json"),
        output_dir=str(tmp_path / "ckpt"),
        **kw,
    )
    with pytest.raises(UserError, match=rf"needs the {package} package.*{EXTRAS_FILE}"):
        train(cfg)
    assert not (tmp_path / "ckpt").exists()
