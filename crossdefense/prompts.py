"""Prompt templates: alpaca-lora JSON files in `configs/`, or the tokenizer's own chat template.

A template is resolved by name (`alpaca` -> configs/alpaca.json) or by path; a relative path is
tried against the current directory first and then against the repository, so upstream's
`--prompt_template_path ./configs/alpaca.json` works from any cwd.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crossdefense import UserError
from crossdefense.io import read_json
from crossdefense.paths import CONFIGS_DIR, REPO_ROOT

TEMPLATE_KEYS = ("description", "prompt_input", "prompt_no_input", "response_split")
CHAT_KEYS = ("description", "chat_template")
STORED_TEMPLATE_FILE = "prompt_template.json"


@dataclass
class Prompter:
    """Builds the text a model sees before its response."""

    name: str
    template: dict[str, Any]
    tokenizer: Any = field(default=None, repr=False)

    @property
    def is_chat(self) -> bool:
        return bool(self.template.get("chat_template"))

    def build(self, instruction: str, input: str | None = None) -> str:
        """The prompt for one record; the response is generated (or trained) right after it."""
        if self.is_chat:
            if self.tokenizer is None or not getattr(self.tokenizer, "chat_template", None):
                raise UserError(
                    f"template {self.name!r} uses the tokenizer's chat template, "
                    "but the tokenizer has none; pick a JSON template such as alpaca"
                )
            sep = self.template.get("input_separator", "\n\n")
            user = instruction + (sep + input if input else "")
            messages = [{"role": "user", "content": user}]
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=True
            )
        if input:
            return self.template["prompt_input"].format(instruction=instruction, input=input)
        return self.template["prompt_no_input"].format(instruction=instruction)

    def training_text(self, prompt: str, response: str) -> str:
        """Prompt + response as trained on; chat templates close the assistant turn themselves."""
        sep = self.template.get("response_prefix", "")
        return prompt + sep + response

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.template}


def _validate(template: Any, source: str) -> dict[str, Any]:
    if not isinstance(template, dict):
        raise UserError(f"{source}: a template must be a JSON object")
    keys = CHAT_KEYS if template.get("chat_template") else TEMPLATE_KEYS
    missing = [k for k in keys if k not in template]
    if missing:
        raise UserError(f"{source}: template is missing key(s) {', '.join(missing)}")
    if not template.get("chat_template"):
        for key in ("prompt_input", "prompt_no_input"):
            if "{instruction}" not in template[key]:
                raise UserError(f"{source}: {key} has no {{instruction}} placeholder")
        if "{input}" not in template["prompt_input"]:
            raise UserError(f"{source}: prompt_input has no {{input}} placeholder")
    return template


def resolve_template_path(name_or_path: str | Path) -> Path:
    """configs/<name>.json for a bare name; otherwise a path (cwd first, then the repo)."""
    text = str(name_or_path)
    if not text.endswith(".json") and "/" not in text:
        path = CONFIGS_DIR / f"{text}.json"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in CONFIGS_DIR.glob("*.json")))
            raise UserError(f"unknown prompt template {text!r}; known: {known}")
        return path
    path = Path(text).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    return REPO_ROOT / path


def load_template(name_or_path: str | Path) -> tuple[str, dict[str, Any]]:
    path = resolve_template_path(name_or_path)
    data = read_json(path)
    data.pop("name", None)
    return path.stem, _validate(data, str(path))


def load_prompter(name_or_path: str | Path, tokenizer: Any = None) -> Prompter:
    name, template = load_template(name_or_path)
    return Prompter(name=name, template=template, tokenizer=tokenizer)


def save_prompter(prompter: Prompter, directory: str | Path) -> None:
    from crossdefense.io import write_json

    write_json(Path(directory) / STORED_TEMPLATE_FILE, prompter.to_dict())


def stored_prompter(directory: str | Path, tokenizer: Any = None) -> Prompter | None:
    """The template a checkpoint was trained with, or None when it stored none."""
    path = Path(directory) / STORED_TEMPLATE_FILE
    if not path.is_file():
        return None
    data = read_json(path)
    name = data.pop("name", path.stem)
    return Prompter(name=name, template=_validate(data, str(path)), tokenizer=tokenizer)


def all_template_names() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.json"))
