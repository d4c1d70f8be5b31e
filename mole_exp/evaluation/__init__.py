"""Generation and scoring: the one evaluator every composer is scored by, and the metrics it uses.

Metrics are registered once with their direction (higher is better) and exact-match normalisations.
"""
