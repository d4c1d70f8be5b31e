"""Task suites. Importing this package registers every dataset loader."""

from mole_exp.tasks import bbh, cbqa, nli, struct2text, synthetic, translation  # noqa: F401  (registers loaders)
from mole_exp.tasks.base import LOADERS, DataUnavailableError, LoadedSplits, Task, register_loader

__all__ = ["LOADERS", "DataUnavailableError", "LoadedSplits", "Task", "register_loader"]
