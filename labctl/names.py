"""Names and identities of the libvirt objects labctl creates.

Every object gets a UUID derived from its kind and name under labctl's own namespace; an object
with the right name but another UUID was not made by labctl and is never touched.
"""

from __future__ import annotations

import hashlib
import uuid

from labctl.lab import Lab, Node

XMLNS = "https://labctl.dev/xmlns/owner/1"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, XMLNS)
IMAGES_POOL = "labctl-images"
LAYER_PREFIX = "baked-"


def owned_uuid(kind: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{kind}/{name}"))


def domain_name(lab: Lab, node: Node) -> str:
    return f"labctl-{lab.name}-{node.name}"


def network_name(lab: Lab) -> str:
    return f"labctl-{lab.name}"


def pool_name(lab: Lab) -> str:
    return f"labctl-{lab.name}"


def bridge_name(lab: Lab) -> str:
    # Linux caps interface names at 15 characters, so the lab name is hashed in.
    return "lcbr-" + hashlib.sha256(lab.name.encode()).hexdigest()[:8]


def disk_volume(node: Node) -> str:
    return f"{node.name}.qcow2"


def seed_volume(node: Node) -> str:
    return f"{node.name}-seed.iso"


def base_volume(image: str, sha256: str) -> str:
    return f"{image}-{sha256[:12]}.qcow2"


def layer_volume(key: str) -> str:
    return f"{LAYER_PREFIX}{key}.qcow2"
