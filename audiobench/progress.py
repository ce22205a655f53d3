"""rich progress pieces shared by long commands (run, pack, train-toy)."""

from __future__ import annotations

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
