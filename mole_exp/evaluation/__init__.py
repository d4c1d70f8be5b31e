"""Generation, scoring and results files: one evaluation path for every composer."""
