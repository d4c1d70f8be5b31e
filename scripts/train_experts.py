"""Train one LoRA expert per dataset of a task suite on the frozen base; write a library folder.

    python scripts/train_experts.py                                          # small_synthetic base, synthetic suite
    python scripts/train_experts.py task=nli model=flan-t5-large experts_training.tasks=[anli_r1,qnli]
    python scripts/train_experts.py experts_training.library_dir=/path/lib experts_training.train.steps=500

Compose the result with `python train.py experts=library experts.library_dir=<folder> model=<same model>`.
Options: conf/train_experts.yaml; the logic lives in mole_exp/tools/expert_training.py.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere without installing

from mole_exp.tools.expert_training import run_from_config  # noqa: E402


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_experts")
def main(cfg: DictConfig) -> None:
    folder = run_from_config(cfg)
    print(folder)


if __name__ == "__main__":
    main()
