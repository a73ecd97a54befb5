"""PyTorch Lightning: ``Trainer(callbacks=[AccelwatchCallback()])``.

Marks a step at the end of every training batch, logs the batch's loss and the trainer's
logged metrics (numbers and 0-d tensors) at ``trainer.global_step``, and sends the module's
hyperparameters as config when training starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import accelwatch

try:  # Lightning 2.x, then the older package name
    from lightning.pytorch.callbacks import Callback as _Base
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        from pytorch_lightning.callbacks import Callback as _Base
    except ImportError:
        _Base = object


def _scalar(value: Any) -> Any:
    """Lightning logs 0-d tensors: take their value here (the client would warn about each)."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except Exception:  # not a one-element tensor: the client drops it, with its warning
            return value
    return value


def _loss(outputs: Any) -> Any:
    if isinstance(outputs, Mapping):
        return outputs.get("loss")
    return outputs


class AccelwatchCallback(_Base):  # type: ignore[misc, valid-type]
    """Steps and metrics of a Lightning fit, sent to the agent watching this process."""

    def __init__(self, log_every_n_steps: int = 1) -> None:
        super().__init__()
        self.log_every_n_steps = max(1, int(log_every_n_steps))

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        hparams = getattr(pl_module, "hparams", None)
        if hparams:
            accelwatch.config(dict(hparams))

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        accelwatch.step()
        step = getattr(trainer, "global_step", None)
        if batch_idx % self.log_every_n_steps:
            return
        metrics: dict[str, Any] = {}
        loss = _loss(outputs)
        if loss is not None:
            metrics["loss"] = _scalar(loss)
        logged = getattr(trainer, "logged_metrics", None) or {}
        for name, value in logged.items():
            metrics.setdefault(str(name), _scalar(value))
        if metrics:
            accelwatch.log(step=step, **metrics)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        found = getattr(trainer, "callback_metrics", None) or {}
        metrics = {str(k): _scalar(v) for k, v in found.items() if str(k).startswith("val")}
        if metrics:
            accelwatch.log(step=getattr(trainer, "global_step", None), **metrics)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        accelwatch.flush()
