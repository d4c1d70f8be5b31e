"""A composed model from a finished run folder or from a composer spec, built as the pipeline evaluates it.

    run config.yaml -> base (cfg.model) -> the fit unit's experts -> composer.compose
        -> its gates checkpoint (composers that train: mole, mixer, fresh_lora)
           or its searched weights from metrics.json (lorahub, pems)
        -> composer.prepare_inference (the run's inference-time expert mask)

    composed = load_run("outputs/runs/<date>/<run>")               # or an eval.py folder, <run>/evals/<name>
    composed = load_spec(["composer=nla", "model=tiny", "experts=tiny"])
    composed.base.model, composed.base.tokenizer                    # what lm-eval (or our evaluator) runs
    composed.release()                                              # the base as it was

Every check that needs no model (the folder holds a finished run, its checkpoint or weights, the unit, the
spec composes and fits nothing) runs in `check_run` / `check_spec`, before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mole_exp.base.models import BaseModel
from mole_exp.composers.base import Composer
from mole_exp.files import METRICS_FILE, read_json
from mole_exp.harness.backends import backend_for
from mole_exp.training.checkpoints import load_composer_state, resolve_unit_checkpoint
from mole_exp.training.compose import compose_config
from mole_exp.training.config import build, validate
from mole_exp.training.fit_units import SUITE, FitUnit, is_flat
from mole_exp.training.moved_paths import with_current_targets
from mole_exp.training.pipeline import unit_experts

MATCHED = "matched"  # composer=single composer.expert=matched: a per-dataset choice lm-eval's tasks cannot make


@dataclass
class Composed:
    """The base with a composer applied (`base.model` is the composed model) and what it was built from."""

    base: BaseModel
    composer: Composer
    source: dict[str, Any] = field(default_factory=dict)  # run folder, unit, composer, mask, experts, checkpoint, ...
    max_length: int | None = None  # the input length the run fitted and evaluated at (data.max_source_length)

    def release(self) -> None:
        self.composer.release()


@dataclass
class RunPlan:
    """What `load_run` will build, found without loading a model."""

    folder: Path
    cfg: DictConfig
    unit: FitUnit
    experts: list[str]  # the experts the unit composed (metrics.json)
    checkpoint: Path | None  # the gates (composers that train)
    weights: list[float] | None  # the searched weights, in `experts` order (lorahub, pems)
    composer: Composer  # built from the run's composer config (options checked), not yet composed


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_composer(cfg: DictConfig, unit: FitUnit | None = None) -> Composer:
    """The run's composer, as the pipeline builds it for a fit unit (its seed where the composer takes one)."""
    seed = {"seed": unit.seed} if unit is not None and "seed" in cfg.composer else {}
    return build(cfg.composer, _convert_="all", **seed)


def refuse_matched(composer: Composer, where: str) -> None:
    if getattr(composer, "expert", None) == MATCHED:
        raise ValueError(
            f"{where}: composer.expert=matched applies each evaluated dataset's own expert, which an lm-eval task does not "
            f"name; compose one expert (composer.expert=<name or index>)"
        )


def run_unit(folder: Path, metrics: dict[str, Any], unit: str | None) -> tuple[FitUnit, dict[str, Any], bool]:
    """The fit unit to compose (the run's only one, or `unit`), its record in metrics.json, and whether the run
    has the one-fit layout."""
    records = metrics.get("units") or {}
    if not records:
        raise ValueError(f"--run {folder}: its {METRICS_FILE} records no fit units (made by older code); rerun it or evaluate it with eval.py")
    if unit is None:
        if len(records) > 1:
            raise ValueError(
                f"--run {folder} holds {len(records)} fits (composer.fit_per={metrics.get('protocol', {}).get('fit_per')}, "
                f"search seeds): choose one with --unit, one of {sorted(records)}"
            )
        unit = next(iter(records))
    if unit not in records:
        raise ValueError(f"--unit {unit!r} is not a fit unit of the run in {folder}; its units are {sorted(records)}")
    units = [
        FitUnit(uid, r["scope"], tuple(r["fit_datasets"]), tuple(r["scored_datasets"]), int(r["seed"]), int(r.get("search_seed_index", 0)))
        for uid, r in records.items()
    ]
    return next(u for u in units if u.id == unit), records[unit], is_flat(units)


def check_run(folder: str | Path, unit: str | None = None) -> RunPlan:
    """Everything `load_run` needs, checked before any model loads: a finished run (or eval.py evaluation) with its
    config, the unit, and its gates checkpoint or searched weights."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"--run {str(folder)!r} is not a folder (give a finished run folder, e.g. outputs/runs/<date>/<run>)")
    if not (folder / "config.yaml").exists():
        raise FileNotFoundError(f"--run {str(folder)!r} is not a run folder: it has no config.yaml")
    if not (folder / METRICS_FILE).exists():
        raise ValueError(f"--run {str(folder)!r} holds no finished run (no {METRICS_FILE}); finish it first (python train.py resume={folder})")
    metrics = read_json(folder / METRICS_FILE)
    if metrics.get("status") != "completed":
        raise ValueError(f"--run {str(folder)!r}: its {METRICS_FILE} has status={metrics.get('status')!r}, not 'completed'")
    cfg = with_current_targets(OmegaConf.load(folder / "config.yaml"))  # written by older code: objects may have moved
    fit_unit, record, flat = run_unit(folder, metrics, unit)
    composer = make_composer(cfg, fit_unit)
    refuse_matched(composer, f"--run {folder}")
    checkpoint = weights = None
    if composer.trains:
        # eval.py's folders (<run>/evals/<name>) read the gates of the run they evaluate (their config's checkpoint)
        trained = Path(str(cfg.checkpoint)) if cfg.get("mode") == "eval" and cfg.get("checkpoint") else folder
        try:
            checkpoint = resolve_unit_checkpoint(str(trained), fit_unit, flat)
        except (FileNotFoundError, ValueError) as error:
            raise FileNotFoundError(
                f"--run {folder}: composer {composer.name!r} trains its parameters, but the run's checkpoint of them is missing: {error}"
            ) from None
    elif composer.needs_search:
        found = (record.get("composer") or {}).get("weights") or {}
        if sorted(found) != sorted(record["experts"]):
            raise ValueError(
                f"--run {folder}: composer {composer.name!r} fits its weights by search, but metrics.json records "
                f"{'no searched weights' if not found else 'weights for other experts'} for unit {fit_unit.id!r} "
                f"(experts {record['experts']})"
            )
        weights = [float(found[name]) for name in record["experts"]]
    return RunPlan(folder, cfg, fit_unit, list(record["experts"]), checkpoint, weights, composer)


def apply_searched_weights(composer: Composer, weights: list[float]) -> None:
    """A search's result merged into the base as the composer merges it once its search ends
    (LoRAHub: its merge form; PEMs: also its negated experts' signs)."""
    composer.weights = list(weights)
    composer.merge_weights(composer.weights, composer.merge, composer.factors_form, getattr(composer, "b_signs", None))


def load_base(cfg: DictConfig) -> BaseModel:
    """The frozen base; a family the bridge has no lm-eval backend for is refused before experts load."""
    base: BaseModel = build(cfg.model)
    backend_for(base.family)
    return base


def load_run(folder: str | Path, unit: str | None = None, device: str | None = None) -> Composed:
    """The composed model of a finished run (one fit unit of it), as its evaluation ran."""
    plan = check_run(folder, unit)
    cfg, composer = plan.cfg, plan.composer
    base = load_base(cfg)
    bank = unit_experts(cfg, base, plan.unit, {})
    if list(bank.names) != plan.experts:
        raise ValueError(
            f"--run {plan.folder}: its config now selects experts {bank.names}, but the run composed {plan.experts} "
            f"(has the expert library changed?)"
        )
    composer.compose(base, bank)
    if plan.checkpoint is not None:
        load_composer_state(composer, plan.checkpoint)
    if plan.weights is not None:
        apply_searched_weights(composer, plan.weights)
    composer.prepare_inference()
    base.model.to(device or default_device()).eval()
    source = {
        "run": str(plan.folder.resolve()), "unit": plan.unit.id, "composer": composer.name, "mask": list(composer.mask_spec),
        "experts": list(bank.names), "model": base.model_id, "checkpoint": str(plan.checkpoint) if plan.checkpoint else None,
        "searched_weights": dict(zip(bank.names, plan.weights, strict=True)) if plan.weights else None,
    }
    return Composed(base, composer, source, int(cfg.data.max_source_length))


def spec_config(overrides: list[str]) -> DictConfig:
    """conf/train.yaml with the spec's overrides (Hydra's compose API), checked as a training config is."""
    from hydra.errors import HydraException

    try:
        cfg = compose_config("train", overrides)
    except HydraException as error:
        raise ValueError(f"--compose {' '.join(overrides)}: {error}") from None
    validate(cfg)
    return cfg


def check_spec(overrides: list[str]) -> tuple[DictConfig, Composer]:
    """A spec composes a model only from what needs no fit: nla, single, base, pems with fixed weights."""
    if not overrides:
        raise ValueError("--compose needs overrides of conf/train.yaml, e.g. --compose composer=nla model=tiny experts=tiny")
    cfg = spec_config(overrides)
    composer = make_composer(cfg, FitUnit(SUITE, SUITE, (), (), int(cfg.seed)))
    where = f"--compose {' '.join(overrides)}"
    if composer.trains:
        raise ValueError(
            f"{where}: composer {composer.name!r} trains its parameters, which a spec does not hold; "
            f"evaluate a finished run of it with --run <run folder>"
        )
    if composer.needs_search:
        raise ValueError(
            f"{where}: composer {composer.name!r} fits its weights by search; evaluate a finished run of it with --run <run folder> "
            f"(its searched weights are recorded in metrics.json)" + (" or give composer.weights=[...]" if composer.name == "pems" else "")
        )
    refuse_matched(composer, where)
    return cfg, composer


def load_spec(overrides: list[str], device: str | None = None) -> Composed:
    """The composed model a spec describes (Hydra overrides of conf/train.yaml), composed over the suite's pool."""
    cfg, composer = check_spec(overrides)
    base = load_base(cfg)
    bank = unit_experts(cfg, base, FitUnit(SUITE, SUITE, (), (), int(cfg.seed)), {})
    composer.compose(base, bank)
    composer.prepare_inference()
    base.model.to(device or default_device()).eval()
    source = {"compose": list(overrides), "composer": composer.name, "mask": list(composer.mask_spec),
              "experts": list(bank.names), "model": base.model_id}
    return Composed(base, composer, source, int(cfg.data.max_source_length))
