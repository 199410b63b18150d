"""The lab model: a lab file parsed into typed, frozen objects, or a precise error.

A lab file is YAML. `defaults:` fills every node field a node leaves out; every node gets a
fixed IP (a DHCP reservation) and a MAC derived from the lab and node names, so the same file
always gives the same lab.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from labctl.errors import InvalidInput
from labctl.kube.config import KubernetesConfig
from labctl.provision.config import PackagesConfig, ProvisioningConfig

INVENTORIES_DIR = Path(__file__).resolve().parent.parent / "inventories"

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
_NAME_RE = r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?$"


def parse_size(value: Any) -> int:
    """'4GiB', '4G', '512MiB', '12 GB' -> bytes (binary units); an int is bytes."""
    if isinstance(value, bool):
        raise ValueError("a size is a string such as '4GiB' or '512MiB'")
    if isinstance(value, int):
        return value
    match = _SIZE_RE.match(str(value))
    if not match:
        raise ValueError(f"{value!r} is not a size; write it like '4GiB' or '512MiB'")
    number, unit = match.groups()
    return int(float(number) * _UNITS[(unit or "")[:1].lower()])


Size = Annotated[int, BeforeValidator(parse_size)]
Name = Annotated[str, Field(pattern=_NAME_RE, description="lower-case letters, digits and '-', at most 32")]


class Role(str, Enum):
    master = "master"
    worker = "worker"
    rancher = "rancher"
    etcd = "etcd"


class Accel(str, Enum):
    auto = "auto"
    kvm = "kvm"
    tcg = "tcg"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeDefaults(_Strict):
    vcpus: int = Field(2, ge=1, le=64, description="virtual CPUs, 1 to 64")
    memory: Size = Field(parse_size("4GiB"), description="RAM such as '4GiB' (at least 512MiB)")
    disk: Size = Field(parse_size("12GiB"), description="root disk such as '12GiB' (at least 2GiB)")
    image: str = Field("debian-12", description="an image name from `labctl image list`")
    packages: tuple[str, ...] = Field(
        (), description="extra packages cloud-init installs at first boot (needs a package source)"
    )


class Node(NodeDefaults):
    name: Name
    roles: tuple[Role, ...] = Field(description="one or more of master, worker, rancher, etcd")
    ip: ipaddress.IPv4Address | None = Field(None, description="an address inside network.subnet")
    mac: str | None = Field(
        None, pattern=r"^52:54:00(:[0-9a-f]{2}){3}$", description="a MAC such as 52:54:00:12:34:56"
    )

    @model_validator(mode="after")
    def _sizes(self) -> Node:
        if not self.roles:
            raise ValueError("roles: give at least one of master, worker, rancher, etcd")
        if self.memory < parse_size("512MiB"):
            raise ValueError("memory must be at least 512MiB")
        if self.disk < parse_size("2GiB"):
            raise ValueError("disk must be at least 2GiB")
        return self

    @property
    def memory_mib(self) -> int:
        return self.memory // 1024**2

    @property
    def disk_bytes(self) -> int:
        return self.disk

    def has_role(self, *roles: Role | str) -> bool:
        return any(Role(r) in self.roles for r in roles)


class Network(_Strict):
    subnet: ipaddress.IPv4Network | None = Field(
        None, description="a /24 to /28 IPv4 network such as 192.168.150.0/24; derived from the lab name if left out"
    )
    domain: str = Field("lab.test", pattern=r"^[a-z0-9.-]+$", description="DNS domain of the nodes")

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        assert self.subnet is not None
        return self.subnet.network_address + 1


class Timeouts(_Strict):
    ready: int = Field(900, ge=10, description="seconds a node may take from start to SSH and cloud-init done")


class Lab(_Strict):
    name: Name
    description: str = ""
    ssh_user: Name = Field("labctl", description="the user labctl creates on every node")
    accel: Accel = Field(Accel.auto, description="auto, kvm or tcg")
    network: Network = Network()
    defaults: NodeDefaults = NodeDefaults()
    nodes: tuple[Node, ...] = Field(description="a list of nodes")
    timeouts: Timeouts = Timeouts()
    packages: PackagesConfig = PackagesConfig()
    provisioning: ProvisioningConfig = ProvisioningConfig()
    kubernetes: KubernetesConfig = KubernetesConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("nodes"), list):
            return data
        defaults = data.get("defaults") or {}
        if not isinstance(defaults, dict):
            return data
        data = dict(data)
        data["nodes"] = [
            {**defaults, **node} if isinstance(node, dict) else node for node in data["nodes"]
        ]
        return data

    @model_validator(mode="after")
    def _addresses(self) -> Lab:
        if not self.nodes:
            raise ValueError("nodes: a lab needs at least one node")
        names = [n.name for n in self.nodes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"node names must be unique; repeated: {', '.join(dupes)}")
        subnet = self.network.subnet or _derived_subnet(self.name)
        if not 24 <= subnet.prefixlen <= 28:
            raise ValueError("network.subnet must be a /24 to /28")
        gateway = subnet.network_address + 1
        hosts = [h for h in subnet.hosts() if h != gateway]
        taken = {n.ip for n in self.nodes if n.ip}
        free = iter(h for h in hosts[9:] + hosts[:9] if h not in taken)
        nodes = []
        for node in self.nodes:
            ip = node.ip
            if ip is not None and (ip not in subnet or ip == gateway or ip == subnet.broadcast_address):
                raise ValueError(f"node {node.name}: ip {ip} is not a usable host address in {subnet} (gateway {gateway})")
            if ip is None:
                ip = next(free, None)
                if ip is None:
                    raise ValueError(f"network.subnet {subnet} has no free address left for node {node.name}")
            nodes.append(node.model_copy(update={"ip": ip, "mac": node.mac or _derived_mac(self.name, node.name)}))
        if len({n.ip for n in nodes}) != len(nodes):
            raise ValueError("two nodes have the same ip")
        object.__setattr__(self, "nodes", tuple(nodes))
        object.__setattr__(self, "network", self.network.model_copy(update={"subnet": subnet}))
        return self

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise InvalidInput(
            f"lab {self.name} has no node {name!r}",
            resolution=f"use one of: {', '.join(n.name for n in self.nodes)}",
        )

    def fqdn(self, node: Node) -> str:
        return f"{node.name}.{self.network.domain}"

    def nodes_with(self, *roles: Role | str) -> tuple[Node, ...]:
        return tuple(n for n in self.nodes if n.has_role(*roles))


def _derived_subnet(lab_name: str) -> ipaddress.IPv4Network:
    octet = 100 + int(hashlib.sha256(lab_name.encode()).hexdigest(), 16) % 100
    return ipaddress.IPv4Network(f"192.168.{octet}.0/24")


def _derived_mac(lab_name: str, node_name: str) -> str:
    digest = hashlib.sha256(f"{lab_name}/{node_name}".encode()).digest()
    return "52:54:00:" + ":".join(f"{b:02x}" for b in digest[:3])


def resolve_lab_path(ref: str | Path) -> Path:
    """A path to a lab file, or the name of one in inventories/."""
    path = Path(ref)
    if path.is_file():
        return path
    candidate = INVENTORIES_DIR / f"{ref}.yaml"
    if "/" not in str(ref) and candidate.is_file():
        return candidate
    known = sorted(p.stem for p in INVENTORIES_DIR.glob("*.yaml"))
    raise InvalidInput(
        f"no lab file {ref}",
        resolution=f"give a path to a lab file, or one of: {', '.join(known) or '(none)'}",
    )


def load_lab(ref: str | Path) -> tuple[Lab, Path]:
    """Read and validate a lab file; every problem is reported with file, field and fix."""
    path = resolve_lab_path(ref)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML", details=str(exc)) from exc
    if not isinstance(data, dict):
        raise InvalidInput(f"{path}: a lab file is a YAML mapping", resolution="start it with `name: mylab`")
    data.setdefault("name", path.stem)
    return parse_lab(data, source=str(path)), path


def parse_lab(data: dict[str, Any], *, source: str = "<lab>") -> Lab:
    try:
        return Lab.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(
            f"{source}: invalid lab file ({exc.error_count()} problem{'s' * (exc.error_count() > 1)})",
            details="\n".join(_describe(error, data) for error in exc.errors()),
        ) from None


def _describe(error: Any, data: dict[str, Any]) -> str:
    loc = _location(error["loc"], data)
    message = error["msg"].removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_allowed_keys(error["loc"][:-1]))
        return f"  {loc}: unknown key; fix: remove it or use one of: {allowed}"
    hint = _field_description(error["loc"])
    fix = f"; fix: {hint}" if hint else ""
    return f"  {loc or 'lab'}: {message}{fix}"


def _location(loc: tuple[Any, ...], data: dict[str, Any]) -> str:
    """('nodes', 1, 'memory') -> 'nodes[1] (kube-worker).memory'."""
    text = ""
    node: Any = data
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and "name" in node:
                text += f" ({node['name']})"
        else:
            text += f".{part}" if text else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return text


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Lab
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = _inner_model(field.annotation)
    return model


def _inner_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _inner_model(arg)
        if found:
            return found
    return None


def _allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    model = _model_at(loc)
    return sorted(model.model_fields if model else ())


def _field_description(loc: tuple[Any, ...]) -> str | None:
    if not loc:
        return None
    model = _model_at(loc[:-1])
    field = model.model_fields.get(str(loc[-1])) if model else None
    return field.description if field else None
