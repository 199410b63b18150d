"""Running bootstrap steps on nodes through the Executor seam: scripts, parallel fan-out, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from labctl.errors import CommandFailed, LabctlError
from labctl.transport import Executor, Result

SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "playbooks" / "kube"
STAGE_DIR = "/var/lib/labctl/artifacts"

_env = Environment(loader=FileSystemLoader(SCRIPTS_DIR), undefined=StrictUndefined, keep_trailing_newline=True)

T = TypeVar("T")


def script(name: str, **values) -> str:
    """Render playbooks/kube/<name>.j2."""
    return _env.get_template(f"{name}.j2").render(**values)


def sh(executor: Executor, command: str, *, sudo: bool = True, timeout: float | None = 600,
       stdin: bytes | None = None) -> Result:
    """Run (as root unless sudo=False); a non-zero exit raises CommandFailed naming the node."""
    result = executor.run(command, sudo=sudo, check=False, timeout=timeout, stdin=stdin)
    if not result.ok:
        first_line = command.strip().splitlines()[0] if command.strip() else command
        raise CommandFailed(
            f"{executor.name}: `{first_line[:120]}` exited with status {result.exit_status}",
            details=result.tail(),
        )
    return result


def run_script(executor: Executor, text: str, *, timeout: float | None = 1800) -> Result:
    """Feed a bash script on stdin, so it needs no quoting and leaves no file behind."""
    return sh(executor, "bash -s", stdin=text.encode(), timeout=timeout)


def succeeds(executor: Executor, command: str) -> bool:
    return executor.run(command, sudo=True, check=False, timeout=60).ok


def push_file(executor: Executor, local: Path, remote: str, *, mode: int = 0o644) -> None:
    executor.push(local.read_bytes(), remote, mode=mode, sudo=True)


def stage(executor: Executor, local_dir: Path, files: Iterable[Path], remote_dir: str) -> None:
    """Copy artifact files (relative to local_dir) under remote_dir, keeping their layout."""
    sh(executor, f"mkdir -p {remote_dir}")
    for relative in files:
        target = f"{remote_dir}/{relative.as_posix()}"
        sh(executor, f"mkdir -p {target.rsplit('/', 1)[0]}")
        push_file(executor, local_dir / relative, target, mode=0o755 if "bin" in relative.parts else 0o644)


def in_parallel(items: Iterable[T], action: Callable[[T], object], what: str) -> None:
    """Run action on every item at once; wait for all, then raise one error naming each failure."""
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [(item, pool.submit(action, item)) for item in items]
        failures = []
        for item, future in futures:
            error = future.exception()
            if error is not None:
                failures.append((item, error))
    if len(failures) == 1:
        raise failures[0][1]
    if failures:
        raise LabctlError(
            f"{what} failed on {len(failures)} nodes",
            details="\n\n".join(str(error) for _, error in failures),
        )


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 10.0) -> bool:
    """Poll check until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
