"""Stop a gate composer's training early when its gates break down, instead of "completing" a broken run.

The criterion (config `gate_guard`, recorded in metrics.json under protocol.gate_guard): within the first
`within_steps` optimizer steps, a trainable (gate) parameter is non-finite, or the mean gate entropy (nats,
the `gate_entropy` the composer reports and gate_stats.jsonl records) is at or below `min_entropy`. With
gates starting at zero the entropy starts at log N (log 8 = 2.08); healthy training moves it by far less
than that in a few steps, while a step that throws the gates to one-hot weights (e.g. `optimizer.lr=1e30`)
drops it to 0 at once. `gate_guard=null` turns the check off; after `within_steps` it costs nothing.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch


class GateCollapseError(FloatingPointError):
    """The gates went non-finite or collapsed to one expert within the first training steps."""


def check_settings(settings: Any) -> None:
    if settings is None:
        return
    within, minimum = settings.get("within_steps"), settings.get("min_entropy")
    if isinstance(within, bool) or not isinstance(within, int) or within < 1:
        raise ValueError(f"gate_guard.within_steps={within!r} must be a positive integer (or gate_guard=null to turn the check off)")
    if isinstance(minimum, bool) or not isinstance(minimum, (int, float)) or minimum < 0:
        raise ValueError(f"gate_guard.min_entropy={minimum!r} must be a number >= 0 (nats)")


class GateHealthCheck(L.Callback):
    """Raises GateCollapseError with the gate statistics of the step (see the module docstring)."""

    def __init__(self, within_steps: int = 10, min_entropy: float = 1e-3):
        self.within_steps, self.min_entropy = int(within_steps), float(min_entropy)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stats = getattr(pl_module, "last_statistics", None) or {}
        step = stats.get("step")
        if step is None or step >= self.within_steps or "gate_entropy" not in stats:
            return
        named = [(n, p) for n, p in pl_module.model.named_parameters() if p.requires_grad]
        non_finite = [n for n, p in named if not bool(torch.isfinite(p).all())]
        problems = []
        if non_finite:
            problems.append(f"{len(non_finite)} gate parameter tensor(s) are non-finite (e.g. {non_finite[0]})")
        if stats["gate_entropy"] <= self.min_entropy:
            problems.append(f"the mean gate entropy fell to {stats['gate_entropy']:.3g} nats (<= gate_guard.min_entropy={self.min_entropy:g})")
        if problems:
            raise GateCollapseError(self.message(step, problems, stats, named, trainer))

    def message(self, step: int, problems: list[str], stats: dict[str, Any], named: list, trainer) -> str:
        largest = max(((float(p.detach().abs().nan_to_num(float("inf")).max()), n) for n, p in named), default=(0.0, "-"))
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
        gates = stats.get("gates") or {}
        shown = "; ".join(f"{scope}: weights {[round(w, 3) for w in g['weights']]}" for scope, g in list(gates.items())[:3])
        return (
            f"the gates collapsed at training step {step} (within gate_guard.within_steps={self.within_steps}): "
            + " and ".join(problems)
            + f". Gate statistics: loss {stats.get('loss')}, task loss {stats.get('task_loss')}, mean entropy {stats['gate_entropy']:.3g}, "
            f"temperature {stats.get('temperature')}, largest |parameter| {largest[0]:.3g} ({largest[1]}), optimizer lr {lr}"
            + (f"; {shown}" + (f" (+{len(gates) - 3} more gates)" if len(gates) > 3 else "") if shown else "")
            + ". The step's statistics are the last line of gate_stats.jsonl. Lower optimizer.lr, or change the criterion "
            "(gate_guard.within_steps, gate_guard.min_entropy; gate_guard=null turns it off)"
        )
