"""Errors that carry what failed, why, and what to do about it."""

from __future__ import annotations


class LabctlError(Exception):
    """A failure reported to the user: brief, optional details, optional resolution."""

    exit_code = 1

    def __init__(self, brief: str, *, details: str | None = None, resolution: str | None = None):
        super().__init__(brief)
        self.brief = brief
        self.details = details
        self.resolution = resolution

    def __str__(self) -> str:
        parts = [self.brief]
        if self.details:
            parts.append(self.details)
        if self.resolution:
            parts.append(f"fix: {self.resolution}")
        return "\n".join(parts)


class InvalidInput(LabctlError):
    """Bad lab file, bad argument: nothing was changed."""

    exit_code = 2


class HypervisorError(LabctlError):
    """libvirt refused or failed an operation."""


class NotOwned(LabctlError):
    """An object with a lab's name exists but labctl did not create it."""


class WaitTimeout(LabctlError):
    """A node did not reach a phase in time."""


class CommandFailed(LabctlError):
    """A command on the host or in a guest exited non-zero."""
