"""The few things every config module needs, kept apart so that stage modules can import them
without importing `seva_tasks.config` (which imports the stage modules: a cycle).
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict

ROOT = Path(os.environ.get("SEVA_ROOT", Path(__file__).resolve().parents[1]))


class StageConfig(BaseModel):
    """Base of every stage config: frozen, and unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def resolve(path: Path | str) -> Path:
    """A config path as an absolute path (relative ones are relative to the project root)."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p
