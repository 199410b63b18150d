"""The libvirt wrapper: every hypervisor side effect labctl has goes through this class.

Objects are found by name and acted on only when their UUID is the one labctl derives for that
name (see labctl.names): a same-named object made by someone else is refused, never changed.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import libvirt
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_fixed

from labctl import names
from labctl.errors import HypervisorError, NotOwned

log = logging.getLogger(__name__)

# libvirt prints every error to stderr unless a handler is registered; errors surface as exceptions.
libvirt.registerErrorHandler(lambda _ctx, err: log.debug("libvirt: %s", err[2] if len(err) > 2 else err), None)

_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "unknown",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "running",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutting-down",
    libvirt.VIR_DOMAIN_SHUTOFF: "shut-off",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "suspended",
}


@dataclass(frozen=True)
class DomainInfo:
    name: str
    state: str
    vcpus: int
    memory_mib: int
    spec: str | None


def _not_found(exc: libvirt.libvirtError) -> bool:
    return exc.get_error_code() in (
        libvirt.VIR_ERR_NO_DOMAIN, libvirt.VIR_ERR_NO_NETWORK,
        libvirt.VIR_ERR_NO_STORAGE_POOL, libvirt.VIR_ERR_NO_STORAGE_VOL,
    )


class Hypervisor:
    def __init__(self, uri: str):
        self.uri = uri
        # libvirtd refuses to refresh a pool while an upload into it runs ("asynchronous jobs
        # running"), so uploads and the refresh after a copy never overlap between threads.
        self._volume_writes = threading.RLock()
        try:
            self.conn = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(
                f"cannot connect to libvirt at {uri}",
                details=str(exc),
                resolution="start libvirtd (and virtlogd), or choose another URI with --connect / LIBVIRT_DEFAULT_URI",
            ) from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def is_local(self) -> bool:
        parsed = urlparse(self.uri)
        return "+" not in parsed.scheme and not parsed.hostname

    # ---- lookups with ownership -------------------------------------------------------------

    def _lookup(self, kind: str, name: str, lookup: Callable[[str], object]):
        try:
            obj = lookup(name)
        except libvirt.libvirtError as exc:
            if _not_found(exc):
                return None
            raise HypervisorError(f"libvirt failed to look up {kind} {name}", details=str(exc)) from exc
        if obj.UUIDString() != names.owned_uuid(kind, name):
            raise NotOwned(
                f"a libvirt {kind} named {name} exists but was not created by labctl",
                resolution=f"rename or remove that {kind} yourself, or give the lab another name",
            )
        return obj

    def domain(self, name: str) -> libvirt.virDomain | None:
        return self._lookup("domain", name, self.conn.lookupByName)

    def network(self, name: str) -> libvirt.virNetwork | None:
        return self._lookup("network", name, self.conn.networkLookupByName)

    def pool(self, name: str) -> libvirt.virStoragePool | None:
        return self._lookup("pool", name, self.conn.storagePoolLookupByName)

    # ---- storage ----------------------------------------------------------------------------

    def ensure_pool(self, name: str, xml: str, path: Path) -> libvirt.virStoragePool:
        pool = self.pool(name)
        if pool is None:
            path.mkdir(parents=True, exist_ok=True)
            pool = self._call(f"define storage pool {name}", self.conn.storagePoolDefineXML, xml, 0)
        if not pool.isActive():
            self._call(f"start storage pool {name}", pool.create, 0)
        return pool

    def volume(self, pool: libvirt.virStoragePool, name: str) -> libvirt.virStorageVol | None:
        try:
            return pool.storageVolLookupByName(name)
        except libvirt.libvirtError as exc:
            if _not_found(exc):
                return None
            raise HypervisorError(f"libvirt failed to look up volume {name}", details=str(exc)) from exc

    def upload_volume(
        self, pool: libvirt.virStoragePool, name: str, source: IO[bytes], size: int, fmt: str
    ) -> str:
        """Create a volume and fill it from source; a failed upload leaves no volume behind."""
        vol_xml = (f"<volume><name>{name}</name><capacity unit='bytes'>{size}</capacity>"
                   f"<target><format type='{fmt}'/></target></volume>")
        with self._volume_writes:
            vol = self._call(f"create volume {name}", pool.createXML, vol_xml, 0)
            try:
                stream = self.conn.newStream(0)
                vol.upload(stream, 0, size, 0)
                stream.sendAll(lambda _stream, nbytes, handle: handle.read(nbytes), source)
                stream.finish()
            except BaseException:
                vol.delete(0)
                raise
            return vol.path()

    def copy_volume(self, source: libvirt.virStorageVol, pool: libvirt.virStoragePool, name: str) -> str:
        """Copy a qcow2 volume's file as it is (a layer keeps its backing file) into another pool."""
        length = source.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2]
        with self._volume_writes:
            stream = self.conn.newStream(0)
            self._call(f"read volume {source.name()}", source.download, stream, 0, length, 0)
            try:
                path = self.upload_volume(pool, name, _StreamReader(stream), length, "qcow2")
                stream.finish()
            except BaseException:
                stream.abort()
                raise
            # The volume was created empty; the refresh makes libvirt read its backing file.
            self._call(f"refresh storage pool {pool.name()}", pool.refresh, 0)
        return path

    def volumes(self, pool: libvirt.virStoragePool) -> list[libvirt.virStorageVol]:
        return pool.listAllVolumes(0)

    def backing_paths(self) -> dict[str, str]:
        """{volume path: its backing file} for every volume of labctl's pools."""
        found = {}
        for pool in self.conn.listAllStoragePools(0):
            if not pool.name().startswith("labctl-") or not pool.isActive():
                continue
            for vol in pool.listAllVolumes(0):
                backing = ET.fromstring(vol.XMLDesc(0)).findtext("backingStore/path")
                if backing:
                    found[vol.path()] = backing
        return found

    def create_overlay(self, pool: libvirt.virStoragePool, name: str, backing: str, capacity: int) -> str:
        vol_xml = (
            f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
            f"<target><format type='qcow2'/></target>"
            f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore></volume>"
        )
        return self._call(f"create overlay {name}", pool.createXML, vol_xml, 0).path()

    def delete_pool(self, name: str) -> None:
        pool = self.pool(name)
        if pool is None:
            return
        if not pool.isActive():
            self._call(f"start storage pool {name}", pool.create, 0)
        pool.refresh(0)
        for vol in pool.listAllVolumes(0):
            self._call(f"delete volume {vol.name()}", vol.delete, 0)
        self._call(f"stop storage pool {name}", pool.destroy)
        self._call(f"remove directory of pool {name}", pool.delete, 0)
        self._call(f"undefine storage pool {name}", pool.undefine)

    # ---- network ----------------------------------------------------------------------------

    def ensure_network(self, name: str, xml: str, subnet: ipaddress.IPv4Network) -> libvirt.virNetwork:
        net = self.network(name)
        if net is None:
            self._refuse_subnet_clash(name, subnet)
            net = self._call(f"define network {name}", self.conn.networkDefineXML, xml)
        if not net.isActive():
            self._start_network(net)
        return net

    @retry(retry=retry_if_exception_type(HypervisorError), stop=stop_after_attempt(3), wait=wait_fixed(1),
           reraise=True)
    def _start_network(self, net: libvirt.virNetwork) -> None:
        # Right after libvirtd starts, the first start of a network can fail once.
        self._call(f"start network {net.name()}", net.create)

    def _refuse_subnet_clash(self, name: str, subnet: ipaddress.IPv4Network) -> None:
        for other, theirs in self._subnets_in_use():
            if theirs.overlaps(subnet):
                raise HypervisorError(
                    f"network {name} would use {subnet}, which overlaps {theirs} of libvirt network {other}",
                    resolution="set network.subnet in the lab file to an unused range",
                )

    def free_subnet(self, candidates: list[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
        used = [theirs for _, theirs in self._subnets_in_use()]
        for subnet in candidates:
            if not any(theirs.overlaps(subnet) for theirs in used):
                return subnet
        raise HypervisorError(f"every one of {candidates[0]} ... {candidates[-1]} is used by a libvirt network",
                              resolution="remove a libvirt network you no longer need")

    def _subnets_in_use(self) -> list[tuple[str, ipaddress.IPv4Network]]:
        found = []
        for other in self.conn.listAllNetworks(0):
            for ip in ET.fromstring(other.XMLDesc(0)).iter("ip"):
                address, netmask = ip.get("address"), ip.get("netmask") or ip.get("prefix")
                if address and ip.get("family") != "ipv6":
                    found.append((other.name(), ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)))
        return found

    def dhcp_ip(self, net: libvirt.virNetwork, mac: str) -> str | None:
        try:
            leases = net.DHCPLeases(mac, 0)
        except libvirt.libvirtError:
            return None
        return leases[-1]["ipaddr"] if leases else None

    def delete_network(self, name: str) -> None:
        net = self.network(name)
        if net is None:
            return
        if net.isActive():
            self._call(f"stop network {name}", net.destroy)
        self._call(f"undefine network {name}", net.undefine)

    # ---- domains ----------------------------------------------------------------------------

    def define_domain(self, xml: str) -> libvirt.virDomain:
        return self._call("define domain", self.conn.defineXML, xml)

    def start_domain(self, dom: libvirt.virDomain) -> None:
        if not dom.isActive():
            self._call(f"start domain {dom.name()}", dom.create)

    def wait_shut_off(self, dom: libvirt.virDomain, *, timeout: float) -> bool:
        """Wait for a guest to power itself off; False when it is still running at the deadline."""
        deadline = time.monotonic() + timeout
        while dom.isActive():
            if time.monotonic() > deadline:
                return False
            time.sleep(1)
        return True

    def domain_info(self, dom: libvirt.virDomain) -> DomainInfo:
        state, _reason = dom.state()
        _, max_mem, _, vcpus, _ = dom.info()
        return DomainInfo(dom.name(), _STATES.get(state, "unknown"), vcpus, max_mem // 1024, self.domain_spec(dom))

    def lab_domains(self, lab_name: str) -> list[libvirt.virDomain]:
        """Every domain labctl made for this lab, including nodes since removed from the lab file."""
        return [
            dom for dom in self.conn.listAllDomains(0)
            if dom.UUIDString() == names.owned_uuid("domain", dom.name())
            and self._owner(dom).get("lab") == lab_name
        ]

    def domain_spec(self, dom: libvirt.virDomain) -> str | None:
        return self._owner(dom).get("spec")

    def _owner(self, dom: libvirt.virDomain) -> dict[str, str]:
        try:
            meta = dom.metadata(libvirt.VIR_DOMAIN_METADATA_ELEMENT, names.XMLNS, 0)
        except libvirt.libvirtError:
            return {}
        return dict(ET.fromstring(meta).attrib)

    def delete_domain(self, name: str) -> None:
        dom = self.domain(name)
        if dom is None:
            return
        if dom.isActive():
            self._call(f"stop domain {name}", dom.destroy)
        self._call(f"undefine domain {name}", dom.undefineFlags, libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)

    def _call(self, what: str, func: Callable, *args):
        try:
            return func(*args)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"libvirt failed to {what}", details=str(exc)) from exc


class _StreamReader:
    """A libvirt download stream read like a file, to feed an upload."""

    def __init__(self, stream: libvirt.virStream):
        self._stream = stream

    def read(self, size: int) -> bytes:
        return self._stream.recv(size)
