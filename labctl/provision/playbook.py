"""Playbooks: ordered provisioning steps in YAML files, rendered per node into shell scripts.

A step file in playbooks/ (loaded in file-name order):

    name: docker                   # unique; `labctl provision LAB --step docker` runs only it
    description: Docker engine     # shown in docs and errors
    roles: [all]                   # or any of master, worker, rancher, etcd
    when: "..."                    # optional Jinja2 expression; the step is left out where false
    packages: ["docker.io"]        # apt packages it installs (Jinja2 per item; empty items dropped)
    timeout: 1800                  # optional, seconds
    script: |                      # Jinja2-templated bash, run as root after playbooks/prelude.sh
      apt_install {{ step.packages | join(' ') }}

A rendered step is keyed by the hash of its full script, so a step whose file or inputs change
runs again and an unchanged one is skipped.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from jinja2 import Environment, StrictUndefined, TemplateError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labctl.errors import InvalidInput
from labctl.keys import LabKeys
from labctl.lab import Lab, Node
from labctl.provision import ports

PLAYBOOKS_DIR = Path(__file__).resolve().parent.parent.parent / "playbooks"
PRELUDE = "prelude.sh"
MARKER_DIR = "/var/lib/labctl/steps"


class Step(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$", description="lower-case letters, digits and '-'")
    description: str = Field(description="one line saying what the step leaves behind")
    roles: tuple[Literal["all", "master", "worker", "rancher", "etcd"], ...] = Field(
        description="roles the step applies to, or [all]"
    )
    when: str | None = Field(None, description="a Jinja2 expression; the step is left out where it is false")
    packages: tuple[str, ...] = Field((), description="apt packages the step installs (each a Jinja2 template)")
    timeout: int | None = Field(None, ge=10, description="seconds the step may run on one node")
    script: str = Field(description="Jinja2-templated bash run as root")

    def applies_to(self, node: Node) -> bool:
        return "all" in self.roles or node.has_role(*self.roles)


@dataclass(frozen=True)
class Playbook:
    prelude: str
    steps: tuple[Step, ...]

    def step_names(self) -> list[str]:
        return [s.name for s in self.steps]


@dataclass(frozen=True)
class RenderedStep:
    name: str
    script: str
    packages: tuple[str, ...]
    digest: str
    timeout: int | None


def load_playbook(directory: Path = PLAYBOOKS_DIR) -> Playbook:
    """Read prelude.sh and every *.yaml step of a directory; bad files are named with the field."""
    prelude_path = directory / PRELUDE
    try:
        prelude = prelude_path.read_text()
    except OSError as exc:
        raise InvalidInput(f"{prelude_path}: cannot read the playbook prelude", details=str(exc)) from exc
    steps: list[Step] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise InvalidInput(f"{path}: not valid YAML", details=str(exc)) from exc
        try:
            steps.append(Step.model_validate(data))
        except ValidationError as exc:
            raise InvalidInput(
                f"{path}: invalid step",
                details="\n".join(
                    f"  {'.'.join(map(str, e['loc'])) or 'step'}: {e['msg']}"
                    f"; fix: {_field_hint(e['loc'])}" for e in exc.errors()
                ),
            ) from None
    names = [s.name for s in steps]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InvalidInput(f"{directory}: step names repeat: {', '.join(repeated)}",
                           resolution="give every step file its own `name:`")
    return Playbook(prelude, tuple(steps))


def _field_hint(loc: tuple[Any, ...]) -> str:
    field = Step.model_fields.get(str(loc[0])) if loc else None
    return field.description if field and field.description else "see the format in docs/provisioning.md"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


_env = Environment(undefined=StrictUndefined, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True)
_env.filters["quote"] = lambda value: shlex.quote(str(value))
_env.filters["b64"] = _b64


def local_repo_url(lab: Lab) -> str:
    """Where guests reach the repository labctl serves during provisioning (packages.source: local)."""
    return f"http://{lab.network.gateway}:{lab.packages.local_port}/"


def context(lab: Lab, node: Node, keys: LabKeys) -> dict[str, Any]:
    """Everything a step template may use for one node."""
    return {
        "lab": lab,
        "node": node,
        "fqdn": lab.fqdn(node),
        "nodes": [{"name": n.name, "fqdn": lab.fqdn(n), "ip": str(n.ip), "roles": [r.value for r in n.roles]}
                  for n in lab.nodes],
        "ssh_user": lab.ssh_user,
        "ports": ports.ports_for(lab, node),
        "protocols": ports.protocols_for(lab, node),
        "firewall": lab.provisioning.firewall,
        "docker": lab.provisioning.docker,
        "apt": {
            "source": lab.packages.source,
            "url": local_repo_url(lab) if lab.packages.source == "local" else lab.packages.mirror_url,
            "components": lab.packages.mirror_components,
        },
        "user_public_key": keys.public_key,
        "user_private_key": keys.private_key_path.read_text(),
        "known_hosts": keys.known_hosts_path.read_text(),
    }


def render_steps(playbook: Playbook, lab: Lab, node: Node, keys: LabKeys) -> list[RenderedStep]:
    """The steps that apply to the node, rendered, in order."""
    base = context(lab, node, keys)
    rendered = []
    for step in playbook.steps:
        if not step.applies_to(node):
            continue
        try:
            if step.when is not None and not _env.compile_expression(step.when)(**base):
                continue
            packages = tuple(p for p in (_env.from_string(t).render(base).strip() for t in step.packages) if p)
            body = _env.from_string(step.script).render({**base, "step": {"name": step.name, "packages": packages}})
        except TemplateError as exc:
            raise InvalidInput(
                f"playbook step {step.name}: template error for node {node.name}",
                details=str(exc),
                resolution=f"fix the step file in {PLAYBOOKS_DIR.name}/; see docs/provisioning.md for the variables",
            ) from exc
        script = f"{playbook.prelude}\n# step: {step.name}\n{body}"
        digest = hashlib.sha256(script.encode()).hexdigest()[:20]
        rendered.append(RenderedStep(step.name, script, packages, digest, step.timeout))
    return rendered
