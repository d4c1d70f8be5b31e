"""The mini reproduction (scripts/reproduce_mini.py): the paper's NLP studies, offline, on a laptop-sized model.

pretrain the small base (model=small_synthetic) -> train one LoRA per synthetic task -> compose them on the
held-out mixture of the tasks and on the held-out two-skill task with every registered composer, over
several seeds -> paper-style tables (markdown) and gate figures (PNG).

    synthetic_tasks.py  the synthetic string tasks (the `synthetic` loader; conf/task/synthetic*.yaml)
    small_base.py       the small T5 pretrained on them (model=small_synthetic); span_corruption.py
    settings.py         the full and --fast sizes
    plan.py             which runs make which table
    runner.py           runs them (pipeline.run on composed Hydra configs, in parallel worker processes)
    tables.py           markdown tables from the runs' metrics.json; claims.py: the claims with intervals
    history.py          every change of a setting; report.py: the report page (tables, figures, timings)
"""
