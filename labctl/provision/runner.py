"""Run rendered playbook steps on every node in parallel, skipping steps a node has already done.

A node records each finished step as a marker file holding the step's hash; one SSH round trip
per node reads all markers, so re-running a provisioned lab costs seconds. A node stops at its
first failing step; the others go on, and the run ends with an error naming every failure.
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from labctl.errors import LabctlError
from labctl.parallel import in_parallel
from labctl.progress import Reporter
from labctl.provision.playbook import MARKER_DIR, RenderedStep
from labctl.transport import Executor, Result, SSHUnreachable, bash_stdin_script

# apt and dpkg locks held by cloud-init or unattended upgrades pass; so does an SSH session cut
# while sshd restarts. Anything else is a real failure and is not retried.
TRANSIENT_OUTPUT = re.compile(
    r"Could not get lock|Unable to acquire the dpkg frontend lock|Unable to lock directory"
    r"|dpkg frontend lock was locked by another process",
)
TAIL_LINES = 25


class TransientFailure(Exception):
    def __init__(self, reason: str, result: Result | None = None):
        super().__init__(reason)
        self.result = result


@dataclass(frozen=True)
class StepOutcome:
    node: str
    step: str
    status: str  # "done", "skipped", "failed"
    seconds: float = 0.0


@dataclass(frozen=True)
class NodeFacts:
    markers: dict[str, str]  # {step name: hash} of the steps the node has finished
    codename: str  # the guest's release, such as bookworm
    arch: str  # dpkg architecture, such as amd64


_PROBE = (
    f"for f in {MARKER_DIR}/*; do [ -f \"$f\" ] && printf 'step %s %s\\n' \"${{f##*/}}\" \"$(cat \"$f\")\"; done; "
    ". /etc/os-release; printf 'release %s %s\\n' \"$VERSION_CODENAME\" \"$(dpkg --print-architecture)\""
)


def probe(executor: Executor, *, attempts: int = 4, wait: Callable[[int], float] | None = None) -> NodeFacts:
    """One round trip: the node's finished steps and its release."""
    result = _retrying(attempts, wait)(lambda: _attempt(executor, _PROBE, None, 60))
    if not result.ok:
        raise LabctlError(f"{executor.name}: reading the provisioning state failed (exit status {result.exit_status})",
                          details=result.tail())
    markers, codename, arch = {}, "", ""
    for line in result.stdout.splitlines():
        kind, _, rest = line.partition(" ")
        first, _, second = rest.partition(" ")
        if kind == "step" and first and second:
            markers[first] = second.strip()
        elif kind == "release":
            codename, arch = first, second.strip()
    return NodeFacts(markers, codename, arch)


def _attempt(executor: Executor, command: str, stdin: bytes | None, timeout: float | None) -> Result:
    try:
        result = executor.run(command, sudo=True, check=False, timeout=timeout, stdin=stdin)
    except SSHUnreachable as exc:
        raise TransientFailure(str(exc)) from exc
    if not result.ok and TRANSIENT_OUTPUT.search(result.stdout + result.stderr):
        raise TransientFailure("apt/dpkg lock held by another process", result)
    return result


def _retrying(attempts: int, wait: Callable[[int], float] | None):
    def call(fn: Callable[[], Result]) -> Result:
        retrying = Retrying(
            stop=stop_after_attempt(attempts),
            wait=(lambda state: wait(state.attempt_number)) if wait else wait_exponential(multiplier=2, max=30),
            retry=retry_if_exception_type(TransientFailure),
            reraise=True,
        )
        return retrying(fn)
    return call


def step_command(step: RenderedStep) -> str:
    """Run the script from stdin; the step's marker exists afterwards only if it succeeded."""
    marker = shlex.quote(f"{MARKER_DIR}/{step.name}")
    return (f"rm -f {marker} && bash -s && mkdir -p {MARKER_DIR} && printf '%s' {shlex.quote(step.digest)} > {marker}")


class NodeRun:
    """One node's pass over its steps."""

    def __init__(self, executor: Executor, steps: list[RenderedStep], markers: dict[str, str], *,
                 reporter: Reporter, log_dir: Path, force: bool, attempts: int, default_timeout: int,
                 wait: Callable[[int], float] | None = None):
        self.executor = executor
        self.node = executor.name
        self.steps = steps
        self.markers = markers
        self.reporter = reporter
        self.log_dir = log_dir
        self.force = force
        self.attempts = attempts
        self.default_timeout = default_timeout
        self.wait = wait

    def pending(self) -> list[RenderedStep]:
        return [s for s in self.steps if self.force or self.markers.get(s.name) != s.digest]

    def run(self) -> list[StepOutcome]:
        outcomes = []
        for step in self.steps:
            if not self.force and self.markers.get(step.name) == step.digest:
                self.reporter.phase(self.node, step.name, "skipped (already done)")
                outcomes.append(StepOutcome(self.node, step.name, "skipped"))
                continue
            outcomes.append(self._run_step(step))
        return outcomes

    def _run_step(self, step: RenderedStep) -> StepOutcome:
        self.reporter.phase(self.node, step.name, "running")
        log_path = self.log_dir / self.node / f"{step.name}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        timeout = step.timeout or self.default_timeout
        attempt_no = 0

        def attempt() -> Result:
            nonlocal attempt_no
            attempt_no += 1
            if attempt_no > 1:
                self.reporter.phase(self.node, step.name, f"retry {attempt_no}/{self.attempts}")
            try:
                result = _attempt(self.executor, step_command(step), bash_stdin_script(step.script).encode(), timeout)
            except TransientFailure as exc:
                _log(log_path, attempt_no, exc.result, note=str(exc))
                raise
            _log(log_path, attempt_no, result)
            return result

        try:
            result = _retrying(self.attempts, self.wait)(attempt)
        except TransientFailure as exc:
            result = exc.result
            if result is None:
                raise StepFailed(self.node, step.name, None, str(exc), log_path) from exc
        seconds = time.monotonic() - start
        if not result.ok:
            self.reporter.phase(self.node, step.name, f"FAILED (exit status {result.exit_status})")
            raise StepFailed(self.node, step.name, result.exit_status, result.tail(TAIL_LINES), log_path)
        self.reporter.phase(self.node, step.name, f"done in {seconds:.1f}s")
        return StepOutcome(self.node, step.name, "done", seconds)


class StepFailed(LabctlError):
    def __init__(self, node: str, step: str, exit_status: int | None, tail: str, log_path: Path):
        status = f"exit status {exit_status}" if exit_status is not None else "the node could not be reached"
        super().__init__(
            f"{node}: step {step} failed ({status})",
            details=f"last lines of output:\n{tail}" if tail else None,
            resolution=f"full output in {log_path}; fix the cause and run `labctl provision LAB --step {step}`",
        )
        self.node = node
        self.step = step
        self.exit_status = exit_status


def _log(path: Path, attempt: int, result: Result | None, note: str = "") -> None:
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    with path.open("a") as log:
        log.write(f"==== {stamp} attempt {attempt}" + (f": {note}" if note else "") + "\n")
        if result is not None:
            log.write(result.stdout)
            if result.stderr:
                log.write("---- stderr\n" + result.stderr)
            log.write(f"==== exit status {result.exit_status}\n")


def run_nodes(runs: Mapping[str, NodeRun]) -> list[StepOutcome]:
    """Run every node's pass in parallel; raise one error naming every failed node."""
    return [outcome for outcomes in in_parallel(runs.values(), NodeRun.run, "provisioning") for outcome in outcomes]
