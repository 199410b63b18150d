"""Pure rendering: cloud-init seeds, the NoCloud ISO, and libvirt XML for a lab. No side effects."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import pycdlib
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from labctl import names
from labctl.keys import LabKeys
from labctl.lab import Lab, Node

CLOUD_INIT_DIR = Path(__file__).resolve().parent.parent / "cloud-init"
_XML_DIR = Path(__file__).resolve().parent / "templates"
SEED_FILES = ("user-data", "meta-data", "network-config")

_cloud_init = Environment(
    loader=FileSystemLoader(CLOUD_INIT_DIR), undefined=StrictUndefined,
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
)
_xml = Environment(
    loader=FileSystemLoader(_XML_DIR), undefined=StrictUndefined, autoescape=True,
    keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
)


def cloud_init(lab: Lab, node: Node, keys: LabKeys) -> dict[str, str]:
    """The NoCloud files for one node, by file name."""
    context = {
        "lab": lab,
        "node": node,
        "fqdn": lab.fqdn(node),
        "user_public_key": keys.public_key,
        "host_key": keys.host_keys[node.name],
        "packages": node.packages,
        "instance_id": f"labctl-{lab.name}-{node.name}",
    }
    return {name: _cloud_init.get_template(f"{name}.j2").render(context) for name in SEED_FILES}


def seed_iso(files: dict[str, str]) -> bytes:
    """A NoCloud seed: an ISO 9660 image labelled `cidata` with Joliet and Rock Ridge names."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident="cidata")
    for index, (name, text) in enumerate(sorted(files.items())):
        data = text.encode()
        iso.add_fp(io.BytesIO(data), len(data), f"/FILE{index};1", rr_name=name, joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    return out.getvalue()


def node_spec_hash(lab: Lab, node: Node) -> str:
    """What a running domain must match to be reused as is: its size, image and address."""
    spec = f"{node.vcpus}/{node.memory}/{node.disk}/{node.image}/{node.ip}/{node.mac}/{lab.network.subnet}"
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def domain_xml(
    lab: Lab, node: Node, *, domain_type: str, disk_path: str, seed_path: str, console_log: str
) -> str:
    name = names.domain_name(lab, node)
    return _xml.get_template("domain.xml.j2").render(
        lab=lab, node=node, name=name, uuid=names.owned_uuid("domain", name), xmlns=names.XMLNS,
        spec_hash=node_spec_hash(lab, node), domain_type=domain_type, disk_path=disk_path,
        seed_path=seed_path, console_log=console_log, network_name=names.network_name(lab),
    )


def network_xml(lab: Lab) -> str:
    name = names.network_name(lab)
    hosts = list(lab.network.subnet.hosts())
    reserved = {node.ip for node in lab.nodes} | {lab.network.gateway}
    dynamic = [h for h in hosts if h not in reserved]
    # A small dynamic range stays for anything else attached by hand; nodes use reservations.
    return _xml.get_template("network.xml.j2").render(
        lab=lab, name=name, uuid=names.owned_uuid("network", name), bridge=names.bridge_name(lab),
        dhcp_start=dynamic[len(dynamic) // 2] if dynamic else hosts[-1],
        dhcp_end=dynamic[-1] if dynamic else hosts[-1],
    )


def pool_xml(name: str, path: Path) -> str:
    return _xml.get_template("pool.xml.j2").render(name=name, uuid=names.owned_uuid("pool", name), path=path)
