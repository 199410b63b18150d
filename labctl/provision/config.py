"""The `provisioning:` and `packages:` sections of a lab file."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?/(tcp|udp)$")
RoleName = Literal["master", "worker", "rancher", "etcd"]


def _check_port(value: str) -> str:
    match = _PORT_RE.match(value)
    if not match:
        raise ValueError(f"{value!r} is not a port; write it like '8080/tcp' or '30000-32767/udp'")
    low, high = int(match[1]), int(match[2] or match[1])
    if not 1 <= low <= high <= 65535:
        raise ValueError(f"{value!r}: ports run from 1 to 65535, low to high")
    return value


Port = Annotated[str, AfterValidator(_check_port)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PackagesConfig(_Strict):
    source: Literal["distro", "local", "mirror"] = Field(
        "distro",
        description="where guests get packages: distro (the image's own sources), "
        "local (a repository labctl builds on the host and serves on the lab network), "
        "mirror (mirror_url)",
    )
    mirror_url: str | None = Field(
        None, pattern=r"^https?://\S+$",
        description="an apt mirror or proxy URL such as http://10.0.0.1:3142/deb.debian.org/debian, for source: mirror",
    )
    mirror_components: tuple[str, ...] | None = Field(
        None, description="archive components to use from the mirror; main for Debian, main universe for Ubuntu if left out",
    )
    local_port: int = Field(
        8765, ge=1024, le=65535,
        description="TCP port on the lab network's gateway where the local repository is served during provisioning",
    )

    @model_validator(mode="after")
    def _mirror_needs_url(self) -> PackagesConfig:
        if self.source == "mirror" and not self.mirror_url:
            raise ValueError("source: mirror needs mirror_url, an http(s) URL of an apt mirror or proxy")
        return self


class DockerConfig(_Strict):
    package: Literal["docker.io", "docker-ce"] = Field(
        "docker.io", description="docker.io (from the distribution) or docker-ce (from Docker's apt repository)",
    )
    version: str | None = Field(
        None, pattern=r"^[A-Za-z0-9.+:~-]+$",
        description="an apt version to pin, such as 20.10.24+dfsg1-1+b3 (see `apt-cache policy docker.io` in a guest)",
    )
    repository: str = Field(
        "https://download.docker.com/linux", pattern=r"^https?://\S+$",
        description="base URL of Docker's apt repository, for package: docker-ce",
    )
    cgroup_driver: Literal["systemd", "cgroupfs"] = Field(
        "systemd", description="cgroup driver of the Docker daemon; kubelet expects systemd",
    )
    log_max_size: str = Field("10m", pattern=r"^\d+[kmg]$", description="size of one container log file, such as 10m")
    log_max_files: int = Field(3, ge=1, le=100, description="container log files kept per container")


class FirewallConfig(_Strict):
    enabled: bool = Field(True, description="install firewalld in the guests and open only the ports each role needs")
    role_ports: dict[RoleName, tuple[Port, ...]] = Field(
        default_factory=dict, description="extra ports per role, such as {worker: ['8080/tcp']}",
    )
    node_ports: dict[str, tuple[Port, ...]] = Field(
        default_factory=dict, description="extra ports per node name, such as {kube-worker: ['9000-9010/tcp']}",
    )


class ProvisioningConfig(_Strict):
    enabled: bool = Field(True, description="run the playbooks after the VMs are up")
    docker: DockerConfig = Field(default_factory=DockerConfig, description="Docker engine on every node")
    firewall: FirewallConfig = Field(default_factory=FirewallConfig, description="firewalld in the guests")
    step_timeout: int = Field(1800, ge=10, description="seconds one step may run on one node")
    retries: int = Field(4, ge=1, le=20, description="attempts of a step that fails for a passing reason (apt lock, SSH reset)")
