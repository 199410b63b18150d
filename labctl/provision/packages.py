"""Where guests get their packages while provisioning (packages.source)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from labctl import aptrepo
from labctl.errors import InvalidInput
from labctl.lab import Lab
from labctl.progress import Reporter


def check_source(lab: Lab) -> None:
    """Reject combinations the package source cannot serve."""
    if lab.packages.source == "local" and lab.provisioning.docker.package == "docker-ce":
        raise InvalidInput(
            "provisioning.docker.package docker-ce cannot come from packages.source local",
            details="the local repository holds Debian/Ubuntu archive packages; docker-ce lives in Docker's own repository",
            resolution="use docker.package: docker.io, or packages.source: distro (guests need internet for docker-ce)",
        )


@contextlib.contextmanager
def local_repository(lab: Lab, packages: Sequence[str], *, suite: str, arch: str,
                     reporter: Reporter) -> Iterator[str]:
    """Build (or reuse) the repository on the host and serve it on the lab's gateway meanwhile."""
    reporter.info(f"local package repository for {suite}/{arch}: {len(packages)} packages and their dependencies")
    repo = aptrepo.build_repo(packages, suite=suite, arch=arch)
    # The port is fixed so the guests' apt source line, and with it the step hash, stays the same.
    with aptrepo.serve(repo, str(lab.network.gateway), lab.packages.local_port) as url:
        yield url
