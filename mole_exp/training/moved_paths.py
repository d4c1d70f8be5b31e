"""Where objects named in configs written by older code live now, so that a finished run's config.yaml still
instantiates (eval.py reads it as it was written).

An experts config naming its library `source: <name>` names it by `_target_` now. A `_target_` under a moved module is rewritten to the module it moved to. A task suite written as the core
`Task` over a loader that now lives in a tool (the synthetic tasks) gets that tool's suite target, which
registers the loader. Moving a module whose objects configs name adds a line to MOVED_MODULES.
(config_hash ignores module paths, so none of this changes a run's hash.)
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from mole_exp.experts import sources
from mole_exp.experts.sources import LEGACY_SOURCES

MOVED_MODULES = {  # before the package restructure -> since
    "mole_exp.models": "mole_exp.base.models",
    "mole_exp.small_base": "mole_exp.tools.mini.small_base",
}
CORE_SUITE = "mole_exp.tasks.Task"
TOOL_SUITES = {"synthetic": "mole_exp.tools.mini.synthetic_tasks.synthetic_suite"}  # loader -> the suite that registers it


def current_target(target: str) -> str:
    module, _, name = target.rpartition(".")
    return f"{MOVED_MODULES[module]}.{name}" if module in MOVED_MODULES else target


def _upgrade(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _upgrade(v) for k, v in node.items()}
        target = node.get("_target_")
        if isinstance(target, str):
            node["_target_"] = current_target(target)
            loaders = {spec.get("loader") for spec in (node.get("datasets") or {}).values() if isinstance(spec, dict)}
            tool = sorted(TOOL_SUITES[loader] for loader in loaders if loader in TOOL_SUITES)
            if node["_target_"] == CORE_SUITE and tool:
                node["_target_"] = tool[0]
        return node
    if isinstance(node, list):
        return [_upgrade(v) for v in node]
    return node


def _upgrade_experts(data: dict[str, Any]) -> dict[str, Any]:
    """An experts config that named its library `source: <name>` names it by `_target_` (mole_exp/experts/sources.py)."""
    experts = data.get("experts")
    if isinstance(experts, dict) and "_target_" not in experts and experts.get("source") in LEGACY_SOURCES:
        target = f"{sources.__name__}.{LEGACY_SOURCES[experts['source']]}"
        data["experts"] = {("_target_" if k == "source" else k): (target if k == "source" else v) for k, v in experts.items()}
    return data


def with_current_targets(cfg: DictConfig) -> DictConfig:
    """`cfg` (a run's config as written) with every `_target_` naming where its object lives now, and the experts'
    library named by its `_target_` where older code wrote `experts.source`."""
    return OmegaConf.create(_upgrade(_upgrade_experts(OmegaConf.to_container(cfg, resolve=False))))
