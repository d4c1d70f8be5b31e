"""The frozen base models: model families (T5's module names, gate scopes, streams), loading and the tiny T5.

Also the one door to the Hugging Face Hub and its cache.
"""
