"""Where the shipped models live and their ``model.name_or_path`` aliases (``gtpo.tiny`` rebuilds them)."""

from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_MODEL_DIR = ASSETS / "tiny"
MULTISTEP_MODEL_DIR = ASSETS / "tiny-multistep"
RELAY_MODEL_DIR = ASSETS / "tiny-relay"
CODE_MODEL_DIR = ASSETS / "tiny-code"
GUESS_MODEL_DIR = ASSETS / "tiny-guess"
SHIPPED_MODELS = {
    "tiny": DEFAULT_MODEL_DIR,
    "tiny-multistep": MULTISTEP_MODEL_DIR,
    "tiny-relay": RELAY_MODEL_DIR,
    "tiny-code": CODE_MODEL_DIR,
    "tiny-guess": GUESS_MODEL_DIR,
}
"""``model.name_or_path`` aliases of the shipped models."""
