"""Running bootstrap steps on nodes through the Executor seam: scripts, parallel fan-out, bounded waits."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from labctl.errors import CommandFailed
from labctl.transport import Executor, Result, bash_stdin_script

SCRIPTS_DIR = Path(__file__).resolve().parent.parent.parent / "playbooks" / "kube"
STAGE_DIR = "/var/lib/labctl/artifacts"

_env = Environment(loader=FileSystemLoader(SCRIPTS_DIR), undefined=StrictUndefined, keep_trailing_newline=True)



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
    return sh(executor, "bash -s", stdin=bash_stdin_script(text).encode(), timeout=timeout)


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


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 10.0) -> bool:
    """Poll check until it is true (True) or timeout seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
