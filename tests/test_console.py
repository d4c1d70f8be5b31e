"""Console output: third-party notices silenced where they are emitted, log lines printed above progress bars
instead of onto them, and a training bar that counts optimizer steps (continued on resume: see
tests/test_fault_tolerance.py)."""

from __future__ import annotations

import io
import logging
import warnings

from mole_exp.training.logs import DropMessages, TqdmConsoleHandler, silence_third_party_notices

TIP = "💡 Tip: For seamless cloud logging"


def make_trainer():
    import lightning as L

    return L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu", max_steps=1)


def test_lightnings_cloud_logger_tip_is_silenced_at_its_logger(caplog):
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    for existing in [f for f in logger.filters if isinstance(f, DropMessages)]:
        logger.removeFilter(existing)
    with caplog.at_level(logging.INFO):
        make_trainer()
    assert TIP in caplog.text  # the notice exists (so the next assertion can fail)
    caplog.clear()
    silence_third_party_notices()
    with caplog.at_level(logging.INFO):
        make_trainer()
    assert TIP not in caplog.text
    assert "GPU available" in caplog.text  # Lightning's other lines still come through


def test_the_leafspec_deprecation_is_silenced_by_its_message_only():
    from lightning.pytorch.utilities._pytree import _tree_flatten

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _tree_flatten(1)
        assert any("LeafSpec" in str(w.message) for w in caught)  # the warning exists
        caught.clear()
        silence_third_party_notices()
        _tree_flatten(1)
        warnings.warn("another FutureWarning", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["another FutureWarning"]  # only that message is dropped


def test_log_lines_go_above_progress_bars_not_onto_them():
    from tqdm import tqdm

    def output(handler_class):
        stream = io.StringIO()
        logger = logging.getLogger(f"test_console.{handler_class.__name__}")
        logger.propagate = False
        handler = handler_class(stream)
        handler.setFormatter(logging.Formatter("[%(levelname)s] - %(message)s"))
        logger.addHandler(handler)
        with tqdm(total=3, file=stream, desc="generate wnli", ascii=True) as bar:
            bar.update(1)
            logger.warning("wnli: {'em': 50.0}")
            bar.update(2)
        logger.removeHandler(handler)
        return [segment for line in stream.getvalue().split("\n") for segment in line.split("\r")]

    glued = [s for s in output(logging.StreamHandler) if "[WARNING]" in s]
    assert not glued[0].startswith("[WARNING]")  # a plain handler writes onto the bar's line
    lines = [s for s in output(TqdmConsoleHandler) if "[WARNING]" in s]
    assert lines == ["[WARNING] - wnli: {'em': 50.0}"]
