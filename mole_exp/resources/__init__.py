"""Packaged data: the FLAN templates, LoRAHub's module list and dataset map, the paper's published numbers.

Read with importlib.resources; no code lives here.
"""
