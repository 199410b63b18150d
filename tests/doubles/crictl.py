"""crictl double: `ps --name N -q` lists the kubelet double's running static pods; `exec ID etcdctl ...
snapshot save PATH` in the etcd pod writes the etcd double's keyspace as the snapshot.

Like the real etcd container, the exec sees only the etcd pod's mounts (its data dir and
/etc/kubernetes/pki/etcd): the certificates must be there, and PATH must be inside the data dir.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from . import etcd
from .common import die, parse_flags, record

TOOL = "crictl"
STATIC_PODS = Path("/run/labctl-doubles/static-pods.json")
ETCD_CERTS = Path("/etc/kubernetes/pki/etcd")


def running_pods() -> dict[str, str]:
    try:
        status = json.loads(STATIC_PODS.read_text())
    except (OSError, ValueError):
        return {}
    try:
        os.kill(status["kubelet_pid"], 0)
    except OSError:
        return {}
    return status["pods"]


def ps(flags: dict[str, str]) -> None:
    pods = running_pods()
    for name, container in pods.items():
        if name == "data-dir" or (flags.get("name") and flags["name"] not in name):
            continue
        print(container if flags.get("quiet") == "true" else f"{container}   {name}   Running")


def etcdctl(data_dir: str, argv: list[str]) -> None:
    flags, words = parse_flags(argv)
    for flag in ("cacert", "cert", "key"):
        path = Path(flags.get(flag, ""))
        if not flags.get(flag) or ETCD_CERTS not in path.parents or not path.is_file():
            die(TOOL, f"Error: open {flags.get(flag, '')}: no such file or directory (--{flag})")
    if not flags.get("endpoints", "").startswith("https://127.0.0.1:2379"):
        die(TOOL, f"Error: context deadline exceeded (etcd listens on https://127.0.0.1:2379, not {flags.get('endpoints')})")
    if words[:2] != ["snapshot", "save"] or len(words) != 3:
        die(TOOL, f"this etcdctl double implements `snapshot save PATH`, not {' '.join(words)}")
    target = Path(words[2])
    if Path(data_dir) not in target.parents:
        die(TOOL, f"Error: could not open {target}.part (open {target}.part: no such file or directory)")
    target.write_text(etcd.snapshot(data_dir))
    record(TOOL, command="snapshot save", path=str(target))
    print(f"Snapshot saved at {target}")


def main(argv: list[str]) -> None:
    argv = ["--quiet" if arg == "-q" else arg for arg in argv]
    if argv[:1] == ["--runtime-endpoint"] and len(argv) > 1:
        endpoint, argv = argv[1], argv[2:]
        path = Path(endpoint.removeprefix("unix://"))
        if not path.is_socket():
            die(TOOL, f'validate service connection: validate CRI v1 runtime API for endpoint "{endpoint}": '
                      f'dial unix {path}: connect: no such file or directory')
    if argv[:1] == ["ps"]:
        flags, _ = parse_flags(argv[1:])
        record(TOOL, command="ps", flags=flags)
        ps(flags)
    elif argv[:1] == ["exec"] and len(argv) >= 3:
        pods = running_pods()
        if argv[1] != pods.get("etcd"):
            die(TOOL, f'getting the status of the container "{argv[1]}": not found (running: {pods})')
        if argv[2] != "etcdctl":
            die(TOOL, f"exec: {argv[2]!r}: the etcd double's container has only etcdctl")
        etcdctl(pods["data-dir"], argv[3:])
    else:
        die(TOOL, f"this crictl double does not implement `crictl {' '.join(argv)}`")
