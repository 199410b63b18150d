"""The `kubernetes:` section of a lab file."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class KubernetesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    distro: Literal["kubeadm", "rke2", "rke", "none"] = Field(
        "none", description="one of kubeadm, rke2, rke, none"
    )
