"""The Lightning and transformers callbacks, driven the way their trainers call them (fakes:
neither library is installed here)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import accelwatch
from accelwatch import _wire
from accelwatch._client import Client
from accelwatch.integrations import lightning, transformers
from tests.tracking.test_client import FakeTensor, _drain


@pytest.fixture
def client(receiver, monkeypatch) -> Client:
    """The module functions the callbacks call, bound to a client that sends to ``receiver``."""
    c = Client(environ={_wire.ENV_SOCKET: receiver.path})
    for name in ("log", "step", "config", "tag", "finish", "flush"):
        monkeypatch.setattr(accelwatch, name, getattr(c, name))
    return c


class FakeLightningTrainer:
    """What Lightning's Trainer offers a callback: global_step, logged and callback metrics."""

    def __init__(self) -> None:
        self.global_step = 0
        self.logged_metrics: dict = {}
        self.callback_metrics: dict = {}

    def fit(self, module, callbacks, batches: int) -> None:
        for cb in callbacks:
            cb.on_train_start(self, module)
        for batch_idx in range(batches):
            outputs = {"loss": FakeTensor(1.0 / (batch_idx + 1))}
            self.global_step += 1
            self.logged_metrics = {"train_acc": FakeTensor(0.1 * batch_idx)}
            for cb in callbacks:
                cb.on_train_batch_end(self, module, outputs, None, batch_idx)
            time.sleep(0.005)
        self.callback_metrics = {"val_loss": FakeTensor(0.25), "train_acc": FakeTensor(1.0)}
        for cb in callbacks:
            cb.on_validation_end(self, module)
            cb.on_train_end(self, module)


def test_lightning_callback_sends_steps_metrics_and_hparams(client, receiver):
    module = SimpleNamespace(hparams={"lr": 0.02, "hidden": 64})
    FakeLightningTrainer().fit(module, [lightning.AccelwatchCallback()], batches=6)
    tick = _drain(receiver, client, lambda t: any(m[3] == "val_loss" for m in t.metrics))
    assert tick.ranks[0].steps == 6 and len(tick.ranks[0].step_times) == 5
    by_name: dict = {}
    for _ts, _rank, step, name, value in tick.metrics:
        by_name.setdefault(name, []).append((step, value))
    assert [s for s, _ in by_name["loss"]] == [1, 2, 3, 4, 5, 6]
    assert len(by_name["train_acc"]) == 6 and by_name["val_loss"] == [(6, 0.25)]
    assert {(s[3], s[4]) for s in tick.settings} == {("lr", "0.02"), ("hidden", "64")}


class FakeHFTrainer:
    """How transformers' CallbackHandler calls a TrainerCallback: (args, state, control, **kw)."""

    def train(self, callbacks, steps: int) -> None:
        args = SimpleNamespace(
            to_dict=lambda: {"learning_rate": 5e-5, "seed": 42, "output_dir": "/tmp/x"}
        )
        state = SimpleNamespace(global_step=0, is_world_process_zero=True)
        control = SimpleNamespace()
        for cb in callbacks:
            cb.on_train_begin(args, state, control, model=None)
        for _ in range(steps):
            state.global_step += 1
            for cb in callbacks:
                cb.on_step_end(args, state, control, model=None)
            if state.global_step % 2 == 0:
                logs = {"loss": 0.5, "learning_rate": 5e-5, "epoch": 0.1, "note": "x"}
                for cb in callbacks:
                    cb.on_log(args, state, control, logs=logs)
            time.sleep(0.005)
        for cb in callbacks:
            cb.on_train_end(args, state, control)


def test_transformers_callback_sends_steps_logs_and_training_arguments(client, receiver):
    FakeHFTrainer().train([transformers.AccelwatchCallback()], steps=6)
    tick = _drain(receiver, client, lambda t: len(t.metrics) >= 9)
    assert tick.ranks[0].steps == 6
    losses = [(m[2], m[4]) for m in tick.metrics if m[3] == "loss"]
    assert losses == [(2, 0.5), (4, 0.5), (6, 0.5)]
    assert not [m for m in tick.metrics if m[3] == "note"]  # text logs are not metrics
    assert {(s[3], s[4]) for s in tick.settings} == {("learning_rate", "5e-05"), ("seed", "42")}


def test_callbacks_import_without_their_frameworks():
    """Neither framework is installed here: the callbacks are plain classes, still importable."""
    for module in (lightning, transformers):
        assert module._Base is object or module._Base.__name__.endswith("Callback")
