"""eval.py: evaluate a finished run again, with its own config, writing under `<run>/evals/<name>/`.

    python eval.py checkpoint=<run folder> composer.mask=[tiny_expert_03]

The run's `config.yaml` decides everything (base, experts, gates, evaluation set and its size); the only
overrides applied are the keys of conf/eval.yaml (mask, evaluation limit and batch size, another suite via
`task@eval_task=<suite>`, generation settings, where the data now lives). Any other override is refused
before anything loads, with the reason: the checkpoint holds gates trained for the run's base, experts and
granularity. The evaluation then goes through the pipeline's own build-and-evaluate path (`mode=eval`), so
it writes the same files as training's evaluation, into its own folder, under the folder's lock.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from mole_exp.files import METRICS_FILE
from mole_exp.training.moved_paths import with_current_targets
from mole_exp.training.run_folder import folder_name

EVAL_CONFIG = Path(__file__).resolve().parents[2] / "conf" / "eval.yaml"
EVALS_DIR = "evals"
CHECKPOINT_FILE = "composer.safetensors"
EVAL_SUITE_GROUP = ("task", "eval_task")  # the one group option eval.py takes: task@eval_task=<suite>
ALWAYS_ALLOWED = ("checkpoint", "name")

GATE_IS_THE_RUNS = "the gate (granularity, input form, scope, temperature) is the run's: its checkpoint holds gates of that shape"
# why a key of the training config cannot change at evaluation (first matching prefix wins)
REFUSALS = (
    ("model", "the base model is the run's: its gates were trained on that base"),
    ("experts", "the expert set is the run's: its gates were trained over those experts (another set needs a new training run)"),
    *((key, GATE_IS_THE_RUNS) for key in ("composer/gate", "composer.gate", "gate")),  # gate: the group's older name
    ("composer", "the composer and its settings are the run's (only composer.mask may change at evaluation)"),
    ("task", "task is the suite the run trained on; to evaluate another suite use task@eval_task=<suite>"),
    ("eval_task", "choose another evaluation suite with task@eval_task=<suite>"),
    ("data", "this data setting concerns training"),
    ("trainer", "a training setting"),
    ("optimizer", "a training setting"),
    ("seed", "the seed is the run's"),
    ("mode", "eval.py always evaluates"),
)


def allowed_keys(path: Path = EVAL_CONFIG) -> list[str]:
    """The overridable keys: the leaves of conf/eval.yaml (Hydra's own settings aside)."""
    tree = yaml.safe_load(path.read_text())

    def leaves(node: Any, prefix: str = "") -> list[str]:
        if isinstance(node, dict):
            return [key for k, v in node.items() for key in leaves(v, f"{prefix}{k}.")]
        return [prefix[:-1]]

    return [key for key in leaves(tree) if not key.startswith(("defaults", "hydra"))]


def refusal(key: str, allowed: list[str]) -> str:
    reason = next((why for prefix, why in REFUSALS if key == prefix or key.startswith(prefix + ".")), "not an evaluation setting")
    return f"{key}: {reason}"


def check_overrides(arguments: list[str], allowed: list[str] | None = None) -> None:
    """Raise ValueError naming every override eval.py does not apply (command-line arguments, before Hydra runs)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    allowed = allowed_keys() if allowed is None else allowed
    overrides = OverridesParser.create().parse_overrides([a for a in arguments if not a.startswith("-")])
    refused = []
    for override in overrides:
        key = override.key_or_group
        if key.startswith("hydra") or key in ALWAYS_ALLOWED or key in allowed:
            continue
        if (key, override.package) == EVAL_SUITE_GROUP:
            continue
        refused.append(refusal(key, allowed))
    if refused:
        raise ValueError(
            "eval.py evaluates a run with the run's own config.yaml; refused: " + "; ".join(refused)
            + f". Allowed overrides: {', '.join(dict.fromkeys([*ALWAYS_ALLOWED, *allowed, 'task@eval_task=<suite>']))}"
        )


def run_folder(checkpoint: str | Path) -> Path:
    """The run folder a `checkpoint=` names (the folder itself, or a file inside its checkpoints/)."""
    path = Path(str(checkpoint))
    if path.is_file() and path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def read_run_config(folder: Path) -> DictConfig:
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"checkpoint={str(folder)!r} is not a run folder: it has no config.yaml")
    if not (folder / METRICS_FILE).exists():
        raise ValueError(
            f"checkpoint={str(folder)!r} holds no finished run (no {METRICS_FILE}); eval.py evaluates finished runs "
            f"(continue this one with: python train.py resume={folder})"
        )
    return with_current_targets(OmegaConf.load(folder / "config.yaml"))  # written by older code: objects may have moved


def check_evaluable(cfg: DictConfig, folder: Path) -> None:
    """A searched composition (LoRAHub, PEMs) is not saved as a checkpoint: only a rerun reproduces it."""
    from hydra.utils import get_class

    composer = get_class(cfg.composer._target_)
    if getattr(composer, "searches", False):
        raise ValueError(
            f"the run in {folder} used composer {cfg.composer.name!r}, whose search result is recorded in metrics.json but "
            f"not saved as a checkpoint; eval.py evaluates gate composers (mole, mixer) and composers without a fit (nla, single)"
        )
    checkpoints = folder / "checkpoints"
    has_gates = (checkpoints / CHECKPOINT_FILE).exists() or any(checkpoints.glob(f"*/{CHECKPOINT_FILE}"))  # per fit unit
    if getattr(composer, "trains", False) and not has_gates:
        raise FileNotFoundError(
            f"the run in {folder} has no checkpoints/{CHECKPOINT_FILE} (nor checkpoints/<dataset>/{CHECKPOINT_FILE}) to evaluate"
        )


def moved_data_dir(cfg: DictConfig, new: str) -> DictConfig:
    """Every string of the run's config that starts with its data_dir, rebased onto `new`."""
    old = str(cfg.paths.data_dir)
    tree = OmegaConf.to_container(cfg)

    def rebase(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: rebase(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rebase(v) for v in node]
        return new + node[len(old):] if isinstance(node, str) and node.startswith(old) else node

    return OmegaConf.create(rebase(tree))


def evaluation_config(eval_cfg: DictConfig, overrides: list[str]) -> DictConfig:
    """The run's config with only the eval overrides applied, set to evaluate into `<run>/evals/<name>/`."""
    folder = run_folder(eval_cfg.checkpoint)
    cfg = read_run_config(folder)
    check_evaluable(cfg, folder)
    if eval_cfg.paths.data_dir is not None:
        cfg = moved_data_dir(cfg, str(eval_cfg.paths.data_dir))
    for key in allowed_keys():
        if key.startswith("paths."):
            continue
        value = OmegaConf.select(eval_cfg, key)
        if value is not None:
            OmegaConf.update(cfg, key, copy.deepcopy(OmegaConf.to_container(value) if OmegaConf.is_config(value) else value), force_add=True)
    if eval_cfg.get("eval_task") is not None:  # task@eval_task=<suite>, resolved against the run's paths and seed
        cfg.eval_task = OmegaConf.to_container(eval_cfg.eval_task, resolve=False)
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    output_dir = folder / EVALS_DIR / str(eval_cfg.name)
    cfg.mode, cfg.checkpoint, cfg.resume, cfg.dry_run, cfg.export_dir = "eval", str(folder), False, False, None
    cfg.paths.output_dir = str(output_dir)
    if cfg.get("trainer") is not None:
        cfg.trainer.default_root_dir = str(output_dir)
    if cfg.get("logger") and "save_dir" in cfg.logger:
        cfg.logger.save_dir = str(output_dir)
    cfg.overrides = list(overrides)
    cfg.evaluates = {"run": str(folder), "overrides": list(overrides), "config_hash": _run_hash(folder)}
    return cfg


def _run_hash(folder: Path) -> str | None:
    from mole_exp.files import read_json

    try:
        return read_json(folder / METRICS_FILE).get("config_hash")
    except (OSError, ValueError):
        return None


def eval_name(override_dirname: str) -> str:
    """The default folder name under evals/: the overrides, made path-safe ('default' without any)."""
    return folder_name(override_dirname) if override_dirname else "default"
