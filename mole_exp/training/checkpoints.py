"""What a run keeps of a fitted composer: only what trained (the gates), as checkpoints/composer.safetensors
(or checkpoints/<unit>/composer.safetensors per fit unit), written atomically and loaded back with shape checks."""

from __future__ import annotations

import os
from pathlib import Path

from mole_exp.composers.base import Composer
from mole_exp.training.fit_units import FitUnit

CHECKPOINT_FILE = "composer.safetensors"


def resolve_checkpoint(path: str) -> Path:
    path = Path(path)
    if path.is_dir():
        if any(path.glob(f"checkpoints/*/{CHECKPOINT_FILE}")) and not (path / "checkpoints" / CHECKPOINT_FILE).exists():
            raise FileNotFoundError(
                f"checkpoint={str(path)!r} holds one checkpoint per fit unit (checkpoints/<dataset>/{CHECKPOINT_FILE}): "
                f"it was fitted per dataset; evaluate it with composer.fit_per=dataset"
            )
        path = path / "checkpoints" / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(f"checkpoint={str(path)!r} does not exist (expected <run dir>/checkpoints/{CHECKPOINT_FILE})")
    return path


def resolve_unit_checkpoint(checkpoint: str, unit: FitUnit, flat: bool) -> Path:
    """The gates of one fit unit: <run dir>/checkpoints/composer.safetensors (one suite fit) or
    <run dir>/checkpoints/<unit>/composer.safetensors."""
    if flat:
        return resolve_checkpoint(checkpoint)
    folder = Path(checkpoint)
    if not folder.is_dir():
        raise ValueError(
            f"checkpoint={checkpoint!r}: a run fitted per unit (composer.fit_per=dataset) keeps one checkpoint per dataset; "
            f"give its run folder (<run dir>/checkpoints/<dataset>/{CHECKPOINT_FILE})"
        )
    path = folder / "checkpoints" / unit.id / CHECKPOINT_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"checkpoint={checkpoint!r} has no checkpoints/{unit.id}/{CHECKPOINT_FILE}: that run did not fit {unit.scope!r} "
            f"on its own (composer.fit_per and the evaluated datasets must be the run's)"
        )
    return path


def save_composer_state(composer: Composer, run_dir: Path, unit_dir: str = "") -> Path | None:
    from safetensors.torch import save_file

    module = composer.trainable_module()
    if module is None:
        return None
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    path = run_dir / "checkpoints" / unit_dir / CHECKPOINT_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_suffix(".tmp")
    save_file(state, str(temp), metadata={"composer": composer.name})
    os.replace(temp, path)
    return path


def load_composer_state(composer: Composer, path: Path) -> None:
    from safetensors.torch import load_file

    module = composer.trainable_module()
    if module is None:
        raise ValueError(f"composer {composer.name!r} has no trained state to load from {path}")
    state = load_file(str(path))
    expected = module.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)}, this config {tuple(expected[k].shape)}" for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    if wrong:
        raise ValueError(
            f"checkpoint {path} holds gates of other shapes than composer {composer.name!r} builds with this config "
            f"({len(wrong)} tensors, e.g. {wrong[0]}): evaluate with the run's own experts, granularity and input form"
        )
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"checkpoint {path} does not fit composer {composer.name!r} with this config: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]} (same experts, granularity and input form needed)"
        )
