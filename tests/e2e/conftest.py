"""Fixtures for end-to-end tests: real guests under a libvirtd that lives in a network namespace.

Every test under tests/e2e is marked `e2e`. They run by default and fail (never skip) when the
host lacks root, QEMU or libvirt. LABCTL_E2E=0 deselects them on purpose, e.g. on a laptop.

Environment:
  LABCTL_E2E=0          deselect the e2e tests
  LABCTL_E2E_CACHE      persistent cache for images and package repositories shared by runs
                        (default /var/cache/labctl-e2e)
  LABCTL_E2E_KEEP=1     keep the run's work directory (guest console logs, libvirt logs)
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.harness import HarnessError, LabNamespace, Labctl

E2E_DIR = Path(__file__).parent
_deselected_key = pytest.StashKey[int]()


def e2e_deselected() -> bool:
    return os.environ.get("LABCTL_E2E") == "0"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    e2e_items = [item for item in items if E2E_DIR in item.path.parents]
    for item in e2e_items:
        item.add_marker(pytest.mark.e2e)
    if e2e_deselected() and e2e_items:
        config.hook.pytest_deselected(items=e2e_items)
        items[:] = [item for item in items if item not in e2e_items]
        config.stash[_deselected_key] = len(e2e_items)


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    if count := config.stash.get(_deselected_key, 0):
        terminalreporter.write_sep(
            "=", f"{count} e2e tests deselected by LABCTL_E2E=0 (unset it to boot real guests)", yellow=True
        )


@pytest.fixture(scope="session")
def netns():
    """The LabNamespace all e2e tests of the session share."""
    try:
        namespace = LabNamespace(keep_workdir=os.environ.get("LABCTL_E2E_KEEP") == "1").__enter__()
    except HarnessError as exc:
        pytest.fail(f"{exc}\n(set LABCTL_E2E=0 to deselect the e2e tests deliberately)", pytrace=False)
    try:
        yield namespace
    finally:
        namespace.close()


@pytest.fixture(scope="session")
def labctl(netns: LabNamespace) -> Labctl:
    """labctl(*args, timeout=, env=, check=) -> CompletedProcess: the installed console script,
    run inside the namespace with `--connect <the namespace's libvirtd>` and LABCTL_HOME set."""
    script = Path(sys.executable).parent / "labctl"
    if not script.exists():
        pytest.fail(f"{script} not found: install the project into this environment (pip install -e .)",
                    pytrace=False)
    return Labctl(netns, script)


@pytest.fixture(scope="session")
def labctl_home(labctl: Labctl) -> Path:
    """The session's LABCTL_HOME (0755, under the namespace's work dir; cache is persistent)."""
    return labctl.home


@pytest.fixture(scope="session")
def host_labctl(labctl_home: Path) -> Callable[..., subprocess.CompletedProcess[str]]:
    """labctl(*args) in the main namespace, for the steps that need the Debian archive (image and
    repository builds); it talks to no guest and no libvirt. Fails the test on a non-zero exit."""
    script = Path(sys.executable).parent / "labctl"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([script, *args], capture_output=True, text=True, timeout=1800,
                              env={**os.environ, "LABCTL_HOME": str(labctl_home)})
        assert proc.returncode == 0, f"labctl {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
        return proc

    return run


@pytest.fixture(scope="session")
def debian_image(host_labctl) -> None:
    """The base image, built on the host from Debian packages (cached by content hash)."""
    host_labctl("image", "build", "debian-12")
