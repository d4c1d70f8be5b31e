"""Train (or search) a composition of frozen LoRA experts and evaluate it.

    python train.py task=nli composer=mole
    python train.py task=nli composer=mole model=tiny experts=tiny trainer.max_steps=20
    python train.py -m experts.count=8,24,48,128
"""

import sys

import hydra
from omegaconf import DictConfig

import mole_exp.training.resolvers  # noqa: F401  (registers ${folder_name:...})
from mole_exp.training.config import check_moved_groups
from mole_exp.training.pipeline import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    try:
        check_moved_groups(sys.argv[1:])  # gate=block -> composer/gate=block, said before Hydra composes
    except ValueError as error:
        sys.exit(f"error: {error}")
    main()
