"""Measuring one configuration: device description, peak memory (CUDA allocator or CPU peak RSS), timed
calls, the bytes autograd saves for backward, and the training step that is timed."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import math
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

GIB = 1024**3


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def device_description(device: torch.device) -> dict[str, Any]:
    info: dict[str, Any] = {
        "type": device.type,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
    }
    try:
        import peft
        import transformers

        info["transformers"], info["peft"] = transformers.__version__, peft.__version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(
            name=torch.cuda.get_device_name(device),
            total_memory_gib=round(props.total_memory / GIB, 2),
            cuda=torch.version.cuda,
            capability=f"{props.major}.{props.minor}",
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        )
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
            if match:
                name = match.group(1).strip()
        info.update(name=name, cpu_count=os.cpu_count())
    return info


def mem_available_bytes() -> int | None:
    with contextlib.suppress(OSError, AttributeError):
        match = re.search(r"^MemAvailable:\s+(\d+) kB", Path("/proc/meminfo").read_text(), re.M)
        if match:
            return int(match.group(1)) * 1024
    return None


class MemoryMeter:
    """Peak memory of a window: CUDA allocator peak, or peak RSS (VmHWM) on CPU."""

    def __init__(self, device: torch.device, fixed_mmap_threshold: bool = False):
        self.device = device
        self._libc = None
        if device.type == "cpu":
            with contextlib.suppress(OSError):
                self._libc = ctypes.CDLL("libc.so.6")
            if self._libc is not None and fixed_mmap_threshold:
                # blocks >= 128 KiB are mmapped and returned on free, so peak RSS tracks live tensors instead of
                # glibc heap growth (the dynamic threshold keeps freed blocks); costs page faults, i.e. step time
                with contextlib.suppress(AttributeError):
                    self._libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD
            self.cpu_ok = self._read_status("VmHWM") is not None and self._can_reset()
        self.metric = (
            "torch.cuda.max_memory_allocated (reset after set-up)"
            if device.type == "cuda"
            else "process peak RSS, VmHWM reset via /proc/self/clear_refs after set-up"
            + (" (glibc mmap threshold fixed at 128 KiB)" if fixed_mmap_threshold else " (glibc heap: overstates allocation-heavy variants)")
            if self.cpu_ok
            else "n/a (no /proc/self/status VmHWM or clear_refs on this system)"
        )

    @staticmethod
    def _read_status(field: str) -> int | None:
        with contextlib.suppress(OSError):
            match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
            if match:
                return int(match.group(1)) * 1024
        return None

    @staticmethod
    def _can_reset() -> bool:
        try:
            Path("/proc/self/clear_refs").write_text("5")
            return True
        except OSError:
            return False

    def release(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self._libc is not None:
            with contextlib.suppress(AttributeError):
                self._libc.malloc_trim(0)

    def current(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.memory_allocated(self.device) / GIB
        rss = self._read_status("VmRSS") if self.cpu_ok else None
        return rss / GIB if rss is not None else None

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.cpu_ok:
            self._can_reset()

    def peak(self) -> float | None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device) / GIB
        hwm = self._read_status("VmHWM") if self.cpu_ok else None
        return hwm / GIB if hwm is not None else None


def is_oom(error: BaseException) -> bool:
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text.lower() or "can't allocate memory" in text.lower())


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast_context(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_train_step(model, batch, parameters, router, alpha: float, device, precision: str) -> Callable[[], torch.Tensor]:
    optimizer = torch.optim.AdamW(parameters, lr=1e-5, weight_decay=0.0)

    def step() -> torch.Tensor:
        with autocast_context(device, precision):
            loss = model(**batch).loss
            if router is not None:
                loss = loss + alpha * router.balance_loss(router.pop_records())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step


def saved_for_backward_bytes(step: Callable[[], Any], model: nn.Module) -> int:
    """Run one training step, counting the bytes autograd keeps for backward during its forward: every
    saved tensor's storage once, parameters and buffers excluded. Device-independent activation memory."""
    held = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in held:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        step()
    return sum(storages.values())


def timed(
    fn: Callable[[], Any], warmup: int, repeats: int, device: torch.device, max_seconds: float
) -> tuple[list[float], list[Any], str | None]:
    """Wall-clock seconds of each call (synchronised on CUDA). Stops early, keeping >= 1 measured call,
    when the projected total exceeds max_seconds."""
    times, outputs, note = [], [], None
    started = time.perf_counter()
    index, total = 0, warmup + repeats
    while index < total:
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        elapsed = time.perf_counter() - t0
        if index >= warmup:
            times.append(elapsed)
            outputs.append(out)
        index += 1
        remaining = total - index
        if remaining and (time.perf_counter() - started) + remaining * elapsed > max_seconds:
            if times:
                note = f"stopped after {len(times)} of {repeats} timed repeats (time cap {max_seconds:.0f}s)"
                break
            warmup, total = index, index + 1  # still warming up: go straight to one timed call
            note = f"warm-up cut to {warmup}, 1 timed repeat (time cap {max_seconds:.0f}s)"
    return times, outputs, note
