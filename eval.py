"""Evaluate a finished run again, with its own config: its gates, experts, base and evaluation set.

    python eval.py checkpoint=outputs/runs/<date>/<run> composer.mask=[tiny_expert_03]
    python eval.py checkpoint=<run> data.eval_limit=100 generation.num_beams=4 name=beam4
    python eval.py checkpoint=<run> task@eval_task=bbh_table8

Only the keys of conf/eval.yaml can be overridden; another base, expert set or gate is refused (the
checkpoint holds gates trained for the run's). Results go to <run>/evals/<name>/ (mole_exp/training/eval_run.py).
"""

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import mole_exp.training.resolvers  # noqa: F401  (registers ${folder_name:...}, ${run_folder:...}, ${eval_name:...})
from mole_exp.training.eval_run import check_overrides, evaluation_config


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    overrides = OmegaConf.to_container(HydraConfig.get().overrides.task)
    evaluation = evaluation_config(cfg, [str(o) for o in overrides])  # refuses a non-run before torch is imported
    from mole_exp.training.pipeline import run

    run(evaluation)


if __name__ == "__main__":
    try:
        check_overrides(sys.argv[1:])  # before Hydra composes, loads or writes anything
    except ValueError as error:
        sys.exit(f"eval.py: {error}")
    main()
