"""Running a composition: the pipeline (orchestration), fit units, Lightning training, resume, run folders.

Also eval.py's config from a finished run, the Hub preflight and what a run records about itself.
"""
