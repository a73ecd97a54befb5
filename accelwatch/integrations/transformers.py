"""Hugging Face ``transformers``: ``Trainer(..., callbacks=[AccelwatchCallback()])``.

Marks a step at the end of every optimizer step, forwards what the Trainer logs (``on_log``:
loss, learning rate, grad norm, eval metrics) at ``state.global_step``, and sends the
training arguments as config when training begins.
"""

from __future__ import annotations

from typing import Any

import accelwatch

try:
    from transformers import TrainerCallback as _Base
except ImportError:  # pragma: no cover - depends on what is installed
    _Base = object

#: TrainingArguments that say what was trained (the rest is plumbing).
_CONFIG_KEYS = (
    "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps",
    "num_train_epochs", "max_steps", "weight_decay", "warmup_steps", "warmup_ratio",
    "lr_scheduler_type", "optim", "seed", "bf16", "fp16", "max_grad_norm",
)  # fmt: skip


class AccelwatchCallback(_Base):  # type: ignore[misc, valid-type]
    """Steps and logs of a ``transformers`` Trainer, sent to the agent watching this process."""

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        values = args.to_dict() if hasattr(args, "to_dict") else vars(args)
        accelwatch.config({k: values[k] for k in _CONFIG_KEYS if k in values})

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        accelwatch.step()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        if not logs:
            return
        numbers = {
            str(k): v for k, v in logs.items() if isinstance(v, (int, float)) or hasattr(v, "item")
        }
        if numbers:
            accelwatch.log(step=getattr(state, "global_step", None), **numbers)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        accelwatch.flush()
