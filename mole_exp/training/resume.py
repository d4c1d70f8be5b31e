"""Finding the run to continue: `resume=true` looks for the newest unfinished run with the same config hash,
`resume=<folder>` names one; run_state.json records each run's hash and status."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mole_exp.files import METRICS_FILE
from mole_exp.training.config import config_hash
from mole_exp.training.unit_store import RESUME_CHECKPOINT, has_progress, progress_time

log = logging.getLogger(__name__)


RUN_STATE_FILE = "run_state.json"


def matches_config(run_dir: Path, recorded_hash: str | None, wanted_hash: str) -> bool:
    """Whether the run in `run_dir` was made with the config that hashes to `wanted_hash`: its recorded hash, or,
    for a hash recorded by older code (which hashed module paths), its config.yaml hashed as today."""
    if recorded_hash == wanted_hash:
        return True
    config_file = Path(run_dir) / "config.yaml"
    if not config_file.exists():
        return False
    try:
        return config_hash(OmegaConf.load(config_file)) == wanted_hash
    except Exception as error:  # an unreadable record is not this config's run
        log.warning("%s cannot be read to compare its config (%s)", config_file, error)
        return False


def find_resumable_run(cfg: DictConfig, run_dir: Path) -> Path | None:
    """resume=true: this run folder if it has a checkpoint, else the newest unfinished run with the same
    config hash under paths.outputs_dir; resume=<folder>: that folder."""
    if cfg.resume in (None, False):
        return None
    if cfg.resume is not True:
        folder = Path(str(cfg.resume))
        if not has_progress(folder):
            raise FileNotFoundError(
                f"resume={str(folder)!r}: nothing there to resume from (no checkpoints/{RESUME_CHECKPOINT}, "
                f"checkpoints/<unit>/{RESUME_CHECKPOINT} or finished units/)"
            )
        return folder
    if has_progress(run_dir):
        return run_dir
    wanted = config_hash(cfg)
    candidates = []
    for state_file in Path(cfg.paths.outputs_dir).rglob(RUN_STATE_FILE):
        folder = state_file.parent
        try:
            state = json.loads(state_file.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if not (folder / METRICS_FILE).exists() and has_progress(folder) and matches_config(folder, state.get("config_hash"), wanted):
            candidates.append((progress_time(folder), folder))
    return max(candidates)[1] if candidates else None
