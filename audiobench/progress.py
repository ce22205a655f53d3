"""rich progress pieces shared by long commands (run, pack, train-toy), and the hook that lets a
progress bar follow an attack's gradient steps inside one batch."""

from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Iterator, Optional

from rich.console import Console
from rich.progress import ProgressColumn
from rich.text import Text

_console = None


def stderr_console() -> Console:
    global _console
    if _console is None:
        _console = Console(stderr=True)
    return _console


class ClipsPerSecondColumn(ProgressColumn):
    """Throughput in clips/s (the task's completed count is in clips)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("- clips/s" if speed is None else f"{speed:,.1f} clips/s", style="progress.data.speed")


_ATTACK_STEP_HOOK: contextvars.ContextVar[Optional[Callable[[], None]]] = contextvars.ContextVar(
    "audiobench_attack_step_hook", default=None)


@contextlib.contextmanager
def on_attack_steps(callback: Callable[[], None]) -> Iterator[None]:
    """Call ``callback()`` after every gradient an attack computes inside this block (the run's
    progress bar shows the steps of a slow batch: APGD, min-eps, the trust companions)."""
    token = _ATTACK_STEP_HOOK.set(callback)
    try:
        yield
    finally:
        _ATTACK_STEP_HOOK.reset(token)


def attack_step() -> None:
    """Report one gradient step to the active hook (a no-op without one)."""
    cb = _ATTACK_STEP_HOOK.get()
    if cb is not None:
        cb()
