"""The MoLE benchmark behind scripts/bench_mole.py (`make bench`): step time, peak memory and generation speed
of MoLE against the frozen base, a per-expert loop and PEFT; cli.py documents what is measured and how."""
