"""The task registry against upstream's evaluation files, and prompt splitting."""

from __future__ import annotations

import json
import re

import pytest

from crossdefense import UserError
from crossdefense.tasks import TASKS, detect_task, doc_kind, get_task, split_prompt


def test_every_upstream_task_file_ends_with_its_instruction(paper_data):
    files = sorted((paper_data / "evaluation").glob("test_*.json"))
    assert len(files) == 15
    for f in files:
        name = re.match(r"test_([a-z]+)", f.stem).group(1)
        task = TASKS[name]
        for i, prompt in enumerate(json.loads(f.read_text())["instructions"]):
            assert detect_task(prompt) is task, f"{f.name} record {i}"
            document, suffix = split_prompt(prompt)
            assert suffix in task.suffixes and document + suffix == prompt
            assert document.strip(), f"{f.name} record {i} has no document"


def test_the_harmful_summarize_file_uses_the_known_variant(paper_data):
    prompts = json.loads((paper_data / "evaluation" / "test_summarize.json").read_text())
    assert all(p.endswith("briefly in 3 sentence.") for p in prompts["instructions"])


@pytest.mark.parametrize("name", list(TASKS))
def test_join_then_split_round_trips(name):
    task = TASKS[name]
    doc = "Some document.\nWith two lines."
    assert split_prompt(task.join(doc)) == (doc, task.separator + task.instruction)


def test_no_task_means_no_document():
    assert split_prompt("Write a poem about rain.") == ("", "Write a poem about rain.")
    assert detect_task("Write a poem about rain.") is None


def test_unknown_task_and_doc_kinds():
    with pytest.raises(UserError, match="unknown task 'poem'"):
        get_task("poem")
    assert [
        doc_kind(s) for s in ("test_cloze", "test_cloze_cnn", "test_case_useful", "Q-Harm")
    ] == ["harmful", "cnn", "useful", "instructions"]


def test_one_majority_rule_names_a_files_task():
    from crossdefense.tasks import TASKS, majority_task

    summ, case = TASKS["summarize"].join("A text."), TASKS["case"].join("a text.")
    assert majority_task([summ, summ, case]) == "summarize"
    assert majority_task([summ, case]) is None  # no majority
    # the task may sit in the input of a record (instruction sets with a separate input)
    assert majority_task(["Do this.", "Do this."], [summ, summ]) == "summarize"
    assert majority_task(["Hello."]) is None
