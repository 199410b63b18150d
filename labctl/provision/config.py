"""The `provisioning:` and `packages:` sections of a lab file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class PackagesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: Literal["distro", "local", "mirror"] = Field(
        "distro",
        description="where guests get packages: distro (the image's own sources), "
        "local (a repository labctl builds on the host and serves on the lab network), "
        "mirror (mirror_url)",
    )
    mirror_url: str | None = Field(None, description="an apt mirror or proxy URL, for source: mirror")


class ProvisioningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    enabled: bool = Field(True, description="run the playbooks after the VMs are up")
