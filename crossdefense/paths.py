"""The only module that knows the repository layout."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "configs"
DATA_DIR = REPO_ROOT / "data"
MINI_DATA_DIR = DATA_DIR / "mini"
XSTEST_DIR = DATA_DIR / "xstest"  # scripts/download_data.sh
CHECKPOINTS_DIR = REPO_ROOT / "checkpoints"
EVALUATION_DIR = REPO_ROOT / "evaluation"
LOGS_DIR = REPO_ROOT / "logs"
EMBEDDED_MODEL_DIR = CHECKPOINTS_DIR / "base" / "SmolLM2-135M-Instruct"
