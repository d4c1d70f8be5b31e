"""Train a library of LoRA experts: one PEFT adapter per dataset of a task suite, and named joint adapters
each trained on the union of several datasets (`joint`, e.g. the paper's Table 5 LoRA on ANLI-R1 + ANLI-R2 +
QNLI), on the frozen base.

    python scripts/train_experts.py model=small_synthetic task=synthetic           (conf/train_experts.yaml)

Defaults follow LoRAHub's recipe (r=16, alpha=32, dropout 0.1, q and v). The library folder holds one
`save_pretrained` adapter per dataset and a `manifest.json`:

    {kind, base_model_id, base_fingerprint, settings, settings_key,
     adapters: [{name, path, task (the dataset key; null for a joint adapter), tasks (the dataset keys it was
                 trained on), joint, suite, rank, alpha, dropout, targets, train_steps, final_loss, train_examples,
                 eval_metric, eval_score (joint: the mean of eval_scores, one per dataset), base_score}]}

which `experts=library experts.library_dir=<folder>` loads (and checks against the base); `task` is the
dataset's key, so `composer=single composer.expert=matched` evaluates each dataset with its own expert. The library is
built in a temporary folder beside the target and renamed into place when complete; a finished library is
never overwritten: the same settings reuse it, other settings raise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from mole_exp.base.family import default_lora_targets
from mole_exp.base.models import BaseModel, weights_fingerprint
from mole_exp.evaluation.evaluator import GenerationSettings, score_examples
from mole_exp.evaluation.metrics import get_metric
from mole_exp.experts.library import MANIFEST
from mole_exp.files import build_folder
from mole_exp.tasks.base import Task
from mole_exp.tools.seq2seq_training import TrainSettings, fit_seq2seq

log = logging.getLogger(__name__)

LIBRARY_KIND = "trained-lora"


class LibraryExistsError(FileExistsError):
    """The library folder holds a finished library made with other settings."""


@dataclass
class LoraSettings:
    rank: int = 16
    alpha: int = 32
    dropout: float = 0.1
    targets: list[str] | None = None  # None: the family's default (base/family.py default_lora_targets), set by `resolved`

    def validate(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"experts_training.lora.rank={self.rank!r} must be a positive integer")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"experts_training.lora.dropout={self.dropout!r} must lie in [0, 1)")
        if self.targets is not None and not self.targets:
            raise ValueError("experts_training.lora.targets is empty; name the projections to adapt, e.g. [q, v], or null for the family's default")

    def resolved(self, base: BaseModel) -> LoraSettings:
        """These settings with `targets` named: null becomes the base family's default (T5 [q, v], Llama/Qwen2/Mistral
        [q_proj, v_proj]) before the library's key is taken, so null and the names it resolves to share one library."""
        return self if self.targets is not None else replace(self, targets=default_lora_targets(base.model))


def expert_seed(seed: int, dataset: str) -> int:
    return seed * 1_000 + zlib.crc32(dataset.encode()) % 1_000


def train_expert(
    base: BaseModel, examples: list[dict[str, Any]], lora: LoraSettings, train: TrainSettings, seed: int, out_dir: Path, what: str
) -> dict[str, Any]:
    """Fit one LoRA on `examples`, save it (PEFT format) to `out_dir`; the base is left as it was."""
    import torch
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=float(lora.dropout), target_modules=list(lora.targets))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # the LoRA A initialisation
        peft_model = get_peft_model(base.model, config)
    try:
        report = fit_seq2seq(peft_model, base.tokenizer, examples, train, seed, what=what)
        peft_model.peft_config["default"].base_model_name_or_path = base.model_id
        peft_model.save_pretrained(str(out_dir), save_embedding_layers=False)
        return report
    finally:
        peft_model.unload()  # the base modules back in place, without the LoRA layers
        base.model.eval()


def score_dataset(model, base: BaseModel, task: Task, dataset: str, settings: GenerationSettings) -> float:
    return score_examples(model, base.tokenizer, task, task.test[dataset], settings)


def adapter_plan(task: Task, datasets: list[str], joint: dict[str, list[str]] | None) -> list[tuple[str, list[str]]]:
    """(adapter name, the datasets it trains on): one per dataset, then one per joint name; bad names raise."""
    plan = [(d, [d]) for d in datasets]
    for name, members in (joint or {}).items():
        members = [members] if isinstance(members, str) else list(members)
        unknown = [d for d in members if d not in task.train]
        if not members or unknown:
            raise ValueError(f"experts_training.joint.{name}={members}: needs loaded datasets of suite {task.name!r}; "
                             f"unknown {unknown}, available {list(task.train)}")
        if name in task.specs or name in datasets:
            raise ValueError(f"experts_training.joint: the name {name!r} is a dataset's; name the joint adapter otherwise")
        plan.append((str(name), members))
    if not plan:
        raise ValueError("nothing to train: experts_training.tasks is empty and experts_training.joint names no adapter")
    return plan


def settings_key(spec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:12]


def library_settings(
    base_model_id: str, fingerprint: str, task: Task, datasets: list[str], plan: list[tuple[str, list[str]]], joint: bool,
    lora: LoraSettings, train: TrainSettings, seed: int,
) -> tuple[dict[str, Any], str]:
    """What a library's adapters depend on (recorded in its manifest) and its key: the base, the suite's name,
    datasets and data arguments, the training rows per dataset, the LoRA and training settings, the seed."""
    trained_on = sorted({d for _, members in plan for d in members})
    settings = {
        "task": task.name,
        "datasets": datasets,
        **({"joint": {name: members for name, members in plan[len(datasets):]}} if joint else {}),
        "data_args": task.args,
        "train_examples": {d: len(task.train[d]) for d in trained_on},
        "lora": asdict(lora),
        "train": {k: v for k, v in asdict(train).items() if k != "log_every"},
        "seed": seed,
    }
    return settings, settings_key({"base_model_id": base_model_id, "base_fingerprint": fingerprint, **settings})


def finished_library(folder: Path, key: str) -> bool:
    """True when `folder` holds a finished library with these settings; raises when it holds another."""
    if not (folder / MANIFEST).exists():
        if folder.exists() and any(folder.iterdir()):
            raise LibraryExistsError(f"{folder} exists and is not empty but holds no {MANIFEST}; choose another library_dir")
        return False
    manifest = json.loads((folder / MANIFEST).read_text())
    if manifest.get("settings_key") == key:
        return True
    raise LibraryExistsError(
        f"{folder} already holds a finished expert library made with other settings (key {manifest.get('settings_key')} "
        f"vs {key}); a finished library is never overwritten: choose another experts_training.library_dir"
    )


def train_library(
    base: BaseModel,
    task: Task,
    library_dir: str | Path | None,
    datasets: list[str] | None = None,
    lora: LoraSettings | None = None,
    train: TrainSettings | None = None,
    seed: int = 0,
    generation: GenerationSettings | None = None,
    score_base: bool = True,
    libraries_root: str | Path | None = None,
    joint: dict[str, list[str]] | None = None,
) -> Path:
    """Train one expert per dataset of `datasets` (None: every dataset of `task`, already loaded with training
    data) and one per name of `joint` on the union of its datasets' training data; write the library.

    Without `library_dir` the library goes to `libraries_root/<suite>-<settings key>`."""
    lora, train = lora or LoraSettings(), train or TrainSettings()
    lora.validate()
    lora = lora.resolved(base)
    train.validate("experts_training.train")
    generation = generation or GenerationSettings(progress=False)
    datasets = list(task.dataset_names if datasets is None else datasets)
    unknown = [d for d in datasets if d not in task.train]
    if unknown:
        raise ValueError(f"experts_training.tasks={unknown}: not loaded datasets of suite {task.name!r}; available: {list(task.train)}")
    plan = adapter_plan(task, datasets, joint)
    fingerprint = weights_fingerprint(base.model)
    settings, key = library_settings(base.model_id, fingerprint, task, datasets, plan, bool(joint), lora, train, seed)
    if library_dir is None:
        if libraries_root is None:
            raise ValueError("experts_training.library_dir is not set (and no libraries root to derive it from)")
        library_dir = Path(str(libraries_root)) / f"{task.name}-{key}"
    folder = Path(os.path.expanduser(str(library_dir)))
    if finished_library(folder, key):
        log.info("expert library %s: already trained with these settings; reused", folder)
        return folder

    def build(staging: Path) -> None:
        adapters = []
        for name, members in plan:
            started = time.perf_counter()
            metrics = sorted({f"{task.specs[d].metric}/{get_metric(task.specs[d].metric).primary}" for d in members})
            base_scores = {d: score_dataset(base.model, base, task, d, generation) for d in members} if score_base else None
            examples = [row for d in members for row in task.train[d]]  # the union; the loader shuffles it (seeded)
            report = train_expert(base, examples, lora, train, expert_seed(seed, name), staging / name, f"expert {name}")
            eval_scores = _score_saved_expert(base, staging / name, task, members, generation)
            eval_score = sum(eval_scores.values()) / len(eval_scores)
            base_score = None if base_scores is None else sum(base_scores.values()) / len(base_scores)
            joint_entry = len(members) > 1 or name != members[0]
            adapters.append({
                "name": name, "path": name, "task": None if joint_entry else name, "suite": task.name,
                **({"tasks": members, "joint": True, "eval_scores": {d: round(v, 2) for d, v in eval_scores.items()}} if joint_entry else {}),
                "rank": lora.rank, "alpha": lora.alpha, "dropout": lora.dropout, "targets": list(lora.targets),
                "train_steps": report["steps"], "final_loss": report["final_loss"], "train_examples": len(examples),
                "eval_metric": "+".join(metrics), "eval_score": round(eval_score, 2),
                "base_score": None if base_score is None else round(base_score, 2),
                "seconds": round(time.perf_counter() - started, 2),
            })
            log.info("expert %s (%s): %s %.1f (base %s) in %.0fs", name, "+".join(members), metrics, eval_score, base_score, adapters[-1]["seconds"])
        if weights_fingerprint(base.model) != fingerprint:
            raise RuntimeError("the base model's weights changed while training experts (they must stay frozen)")
        manifest = {"kind": LIBRARY_KIND, "base_model_id": base.model_id, "base_fingerprint": fingerprint,
                    "settings": settings, "settings_key": key, "adapters": adapters}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")

    return build_folder(folder, build, finished=lambda f: finished_library(f, key), what="expert library")


def _score_saved_expert(base: BaseModel, adapter_dir: Path, task: Task, datasets: list[str], generation: GenerationSettings) -> dict[str, float]:
    """The expert's score on each of its datasets as it will be composed: reloaded from disk onto the base."""
    from peft import PeftModel

    peft_model = PeftModel.from_pretrained(base.model, str(adapter_dir))
    try:
        return {d: score_dataset(peft_model, base, task, d, generation) for d in datasets}
    finally:
        peft_model.unload()


def run_from_config(cfg: Any) -> Path:
    """`scripts/train_experts.py`: build the base and the task suite from `conf/train_experts.yaml`, train the library."""
    import torch
    from omegaconf import OmegaConf

    from mole_exp.training.config import build

    options = cfg.experts_training
    task: Task = build(cfg.task, _convert_="all")
    joint_cfg = options.get("joint")
    joint = {str(k): [v] if isinstance(v, str) else list(v) for k, v in (OmegaConf.to_container(joint_cfg, resolve=True) if joint_cfg else {}).items()}
    wanted = task.dataset_names if options.tasks is None else list(options.tasks)
    unknown = [d for d in [*wanted, *(d for members in joint.values() for d in members)] if d not in task.specs]
    if unknown:
        raise ValueError(f"experts_training.tasks/joint name {sorted(set(unknown))}: not datasets of suite {task.name!r}; "
                         f"available: {task.dataset_names}")
    needed = set(wanted) | {d for members in joint.values() for d in members}
    task.specs = {k: v for k, v in task.specs.items() if k in needed}
    task.load(need_train=True, train_limit=options.train_limit, eval_limit=options.eval_limit)
    base: BaseModel = build(cfg.model)
    device = torch.device(cfg.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    base.model.to(device)
    folder = train_library(
        base,
        task,
        options.library_dir,
        datasets=[d for d in wanted if d in task.train],
        lora=LoraSettings(**OmegaConf.to_container(options.lora, resolve=True)),
        train=TrainSettings(**OmegaConf.to_container(options.train, resolve=True)),
        seed=int(cfg.seed),
        generation=GenerationSettings(batch_size=options.eval_batch_size, progress=False),
        score_base=bool(options.score_base),
        libraries_root=Path(str(cfg.paths.outputs_dir)) / "libraries",
        joint=joint,
    )
    log.info("expert library: %s (compose it with experts=library experts.library_dir=%s)", folder, folder)
    return folder
