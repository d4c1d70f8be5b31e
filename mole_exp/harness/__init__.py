"""lm-evaluation-harness on composed models: the `mole` lm-eval model (lm.py, needs the `lm-eval` extra), a run
folder or composer spec made into a composed model (composed.py), the lm-eval backend per model family
(backends.py), the local task data (local_tasks.py), scripts/lm_eval.py (cli.py)."""
