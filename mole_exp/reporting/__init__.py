"""Results files -> the paper's tables, intervals and significance, run comparisons and gate figures.

Reads finished runs' metrics.json, predictions.jsonl and gate_stats.jsonl; never runs a model.
"""
