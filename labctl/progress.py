"""Progress of long work, per node and phase: a live table on a terminal, timestamped lines otherwise."""

from __future__ import annotations

import threading
import time

from rich.console import Console
from rich.live import Live
from rich.table import Table


class Reporter:
    """Receives phase changes from concurrent workers; safe to call from any thread."""

    def __init__(self, console: Console | None = None, *, live: bool | None = None):
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self._live_enabled = self.console.is_terminal if live is None else live
        self._lock = threading.Lock()
        self._rows: dict[str, tuple[str, str, float]] = {}
        self._start = time.monotonic()
        self._live: Live | None = None

    def __enter__(self) -> Reporter:
        if self._live_enabled:
            self._live = Live(self._table(), console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._live is not None:
            self._live.update(self._table())
            self._live.__exit__(*exc)
            self._live = None

    def elapsed(self) -> float:
        return time.monotonic() - self._start

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        with self._lock:
            self._rows[node] = (phase, detail, time.monotonic())
            if self._live is not None:
                self._live.update(self._table())
            else:
                suffix = f" ({detail})" if detail else ""
                self.console.print(f"[{self.elapsed():6.1f}s] {node}: {phase}{suffix}")

    def info(self, message: str) -> None:
        with self._lock:
            self.console.print(message)

    def warn(self, message: str) -> None:
        with self._lock:
            self.console.print(f"[yellow]warning:[/yellow] {message}")

    def _table(self) -> Table:
        table = Table(title=f"elapsed {self.elapsed():.0f}s", title_justify="left")
        table.add_column("node")
        table.add_column("phase")
        table.add_column("detail")
        table.add_column("since", justify="right")
        now = time.monotonic()
        for node, (phase, detail, since) in self._rows.items():
            table.add_row(node, phase, detail, f"{now - since:.0f}s")
        return table


class QuietReporter(Reporter):
    """Collects phases without printing; for library use and tests."""

    def __init__(self):
        super().__init__(Console(quiet=True), live=False)
        self.events: list[tuple[str, str, str]] = []

    def phase(self, node: str, phase: str, detail: str = "") -> None:
        self.events.append((node, phase, detail))

    def info(self, message: str) -> None:
        self.events.append(("", "info", message))

    def warn(self, message: str) -> None:
        self.events.append(("", "warn", message))
