"""conf/'s configs composed with overrides outside a Hydra run (Hydra's compose API), for the tools, the lm-eval
bridge and the tests: one place that knows where conf/ is and registers the resolvers it uses.

It lives in training, the lowest layer that knows conf/: the resolvers conf/ uses (training/resolvers.py) read
run folders, which is training's business."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

import mole_exp.training.resolvers  # noqa: F401  (registers the resolvers conf/ uses)

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose_config(config_name: str, overrides: list[str], *, return_hydra_config: bool = False,
                   conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """conf/<config_name>.yaml with Hydra overrides, as Hydra's compose API gives it (unresolved)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=return_hydra_config)


def compose_run_config(overrides: list[str], output_dir: str | Path | None = None, *, conf_dir: str | Path = CONF_DIR) -> DictConfig:
    """conf/train.yaml with overrides as `python train.py <overrides>` sees it, resolvable outside a Hydra run:
    Hydra's runtime config is set (so `${hydra:...}` resolves), `paths.output_dir` is `output_dir` where given
    (the `hydra` node it reads is read-only), the overrides are recorded under `overrides` as train.py records
    them, and the `hydra` node is dropped."""
    from hydra.core.hydra_config import HydraConfig

    cfg = compose_config("train", overrides, return_hydra_config=True, conf_dir=conf_dir)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    if output_dir is not None:
        cfg.paths.output_dir = str(output_dir)
    cfg.overrides = list(overrides)
    del cfg["hydra"]
    return cfg
