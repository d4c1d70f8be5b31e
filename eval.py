"""Evaluate a trained composition without training: loads only the trained gates.

    python eval.py checkpoint=outputs/runs/<date>/<run> task=nli model=tiny experts=tiny
(the same model/experts/gate options as the training run; the checkpoint holds only the gates)
"""

import hydra
from omegaconf import DictConfig

import mole_exp.resolvers  # noqa: F401  (registers ${folder_name:...})
from mole_exp.pipeline import run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    cfg.mode = "eval"
    run(cfg)


if __name__ == "__main__":
    main()
