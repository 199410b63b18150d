"""Every host subprocess labctl starts goes through here, so each is logged and fails alike."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from labctl.errors import CommandFailed

log = logging.getLogger(__name__)


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    check: bool = True,
    capture: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv on the host. With check, a non-zero exit raises CommandFailed with stderr's tail."""
    args = [os.fspath(a) for a in argv]
    log.debug("run: %s", shlex.join(args))
    full_env = None if env is None else {**os.environ, **env}
    stdio = subprocess.PIPE if capture else None
    try:
        proc = subprocess.run(
            args,
            env=full_env,
            cwd=cwd,
            input=input,
            stdout=stdio,
            stderr=subprocess.PIPE if capture or check else None,
            timeout=timeout,
        )
    except FileNotFoundError as exc:
        raise CommandFailed(
            f"{args[0]} is not installed",
            resolution=f"install the package that provides {args[0]} and retry",
        ) from exc
    if check and proc.returncode != 0:
        tail = (proc.stderr or b"").decode(errors="replace").strip().splitlines()[-20:]
        raise CommandFailed(
            f"command failed with exit status {proc.returncode}: {shlex.join(args)}",
            details="\n".join(tail) or None,
        )
    return proc


def output(argv: Sequence[str | os.PathLike[str]], **kwargs) -> str:
    """Run argv and return its stdout as text."""
    return run(argv, capture=True, **kwargs).stdout.decode()
