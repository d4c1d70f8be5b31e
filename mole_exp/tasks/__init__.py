"""Task suites: datasets with their loaders, FLAN templates, metrics and generation lengths (conf/task/).

Importing this package registers every dataset loader of the core (tools register their own).
"""

from mole_exp.tasks import bbh, cbqa, nli, struct2text, translation  # noqa: F401  (registers loaders)
from mole_exp.tasks.base import LOADERS, DataUnavailableError, LoadedSplits, Task, register_loader

__all__ = ["LOADERS", "DataUnavailableError", "LoadedSplits", "Task", "register_loader"]
