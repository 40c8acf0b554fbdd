"""Ctrl-C during a fine-tune: the first one asks the loop to save and stop after the current step."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any


class FinetuneInterrupted(Exception):
    """Ctrl-C during training: the state after the last complete step was saved to ``state``."""

    def __init__(self, step: int, total: int, state: Path) -> None:
        super().__init__(f"interrupted at step {step}/{total}")
        self.step = step
        self.total = total
        self.state = state


class SigintFlag:
    """The first Ctrl-C sets a flag (the loop saves after the current step); the second one raises
    KeyboardInterrupt at once. Only in the main thread (signal handlers live there)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.hit = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.hit:
            raise KeyboardInterrupt
        self.hit = True

    def __enter__(self) -> SigintFlag:
        if self.enabled:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self._previous)
