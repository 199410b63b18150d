"""Doing one thing on many nodes at once, and reporting every failure, not just the first."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from labctl.errors import LabctlError

T = TypeVar("T")
R = TypeVar("R")


def in_parallel(items: Iterable[T], action: Callable[[T], R], what: str) -> list[R]:
    """Run action on every item in a thread of its own; return the results in item order.

    Waits for all to end. One failure is raised as it is; several become one error naming each.
    """
    items = list(items)
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(action, item) for item in items]
        failures = [f.exception() for f in futures if f.exception() is not None]
    if len(failures) == 1:
        raise failures[0]
    if failures:
        raise LabctlError(f"{what} failed on {len(failures)} nodes",
                          details="\n\n".join(str(error) for error in failures))
    return [f.result() for f in futures]
