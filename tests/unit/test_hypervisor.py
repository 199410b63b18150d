"""The libvirt wrapper against libvirt's own test driver: real libvirt code, no VMs."""

import time
from concurrent.futures import ThreadPoolExecutor

import libvirt
import pytest

from labctl import names, render
from labctl.errors import HypervisorError, NotOwned
from labctl.hypervisor import Hypervisor

from .helpers import make_lab


@pytest.fixture
def hv():
    # Every open of test:///default shares one in-process driver state; start from its stock objects.
    with Hypervisor("test:///default") as hv:
        yield hv
        for dom in hv.conn.listAllDomains(0):
            if dom.name().startswith(("labctl-", "intruder")):
                if dom.isActive():
                    dom.destroy()
                dom.undefine()
        for net in hv.conn.listAllNetworks(0):
            if net.name() != "default":
                if net.isActive():
                    net.destroy()
                net.undefine()


def _define_lab(hv, lab):
    net = hv.ensure_network(names.network_name(lab), render.network_xml(lab), lab.network.subnet)
    doms = []
    for node in lab.nodes:
        xml = render.domain_xml(lab, node, domain_type="test", disk_path="/d", seed_path="/s", console_log="/c")
        doms.append(hv.define_domain(xml))
    return net, doms


def test_network_is_defined_started_and_owned(hv):
    lab = make_lab()
    net = hv.ensure_network(names.network_name(lab), render.network_xml(lab), lab.network.subnet)
    assert net.isActive()
    assert net.UUIDString() == names.owned_uuid("network", "labctl-t")
    again = hv.ensure_network(names.network_name(lab), render.network_xml(lab), lab.network.subnet)
    assert again.UUIDString() == net.UUIDString()
    hv.delete_network("labctl-t")
    assert hv.network("labctl-t") is None


def test_a_same_named_network_not_made_by_labctl_is_refused(hv):
    lab = make_lab()
    foreign = render.network_xml(lab).replace(names.owned_uuid("network", "labctl-t"),
                                              "11111111-2222-3333-4444-555555555555")
    hv.conn.networkDefineXML(foreign)
    with pytest.raises(NotOwned, match="was not created by labctl"):
        hv.ensure_network("labctl-t", render.network_xml(lab), lab.network.subnet)
    with pytest.raises(NotOwned):
        hv.delete_network("labctl-t")
    assert hv.conn.networkLookupByName("labctl-t") is not None, "a foreign network must survive"


def test_overlapping_subnet_is_refused_with_the_other_networks_name(hv):
    first = make_lab(name="one")
    hv.ensure_network("labctl-one", render.network_xml(first), first.network.subnet)
    second = make_lab(name="two")
    with pytest.raises(HypervisorError) as info:
        hv.ensure_network("labctl-two", render.network_xml(second), second.network.subnet)
    assert "labctl-one" in info.value.brief and "network.subnet" in info.value.resolution


def test_domains_carry_owner_metadata_and_are_found_per_lab(hv):
    lab = make_lab()
    other = make_lab(name="t-2", network={"subnet": "192.168.151.0/24"})
    _, doms = _define_lab(hv, lab)
    _define_lab(hv, other)
    found = sorted(d.name() for d in hv.lab_domains("t"))
    assert found == ["labctl-t-kube-master", "labctl-t-kube-worker", "labctl-t-rancher-host"]
    assert hv.domain_spec(doms[0]) == render.node_spec_hash(lab, lab.nodes[0])
    hv.start_domain(doms[0])
    info = hv.domain_info(doms[0])
    assert (info.state, info.vcpus, info.memory_mib) == ("running", 1, 1024)
    for dom in found:
        hv.delete_domain(dom)
    assert hv.lab_domains("t") == []
    assert len(hv.lab_domains("t-2")) == 3


def test_a_foreign_domain_with_a_labctl_name_is_left_alone(hv):
    lab = make_lab()
    xml = render.domain_xml(lab, lab.nodes[0], domain_type="test", disk_path="/d", seed_path="/s",
                            console_log="/c")
    foreign = xml.replace(names.owned_uuid("domain", "labctl-t-rancher-host"), "11111111-2222-3333-4444-555555555555")
    hv.conn.defineXML(foreign)
    assert hv.lab_domains("t") == []
    with pytest.raises(NotOwned):
        hv.delete_domain("labctl-t-rancher-host")
    assert hv.conn.lookupByName("labctl-t-rancher-host")


def test_connection_failure_says_what_to_do():
    with pytest.raises(HypervisorError) as info:
        Hypervisor("qemu+unix:///system?socket=/nonexistent/libvirt-sock")
    assert "start libvirtd" in info.value.resolution


def test_is_local():
    assert Hypervisor.is_local.fget(type("H", (), {"uri": "qemu:///system"})())
    assert not Hypervisor.is_local.fget(type("H", (), {"uri": "qemu+ssh://host/system"})())


def test_libvirt_errors_do_not_reach_stderr(hv, capfd):
    with pytest.raises(libvirt.libvirtError):
        hv.conn.lookupByName("does-not-exist")
    assert capfd.readouterr().err == ""


class _BusyPool:
    """A pool that, like libvirtd, refuses a refresh while an upload into it is in flight."""

    def __init__(self):
        self.uploading = 0
        self.refreshes = 0

    def name(self):
        return "labctl-images"

    def createXML(self, xml, _flags):
        return _UploadedVolume(self, slow="layer-1" in xml)

    def refresh(self, _flags):
        if self.uploading:
            raise libvirt.libvirtError("internal error: pool 'labctl-images' has asynchronous jobs running.")
        self.refreshes += 1


class _UploadedVolume:
    def __init__(self, pool, slow):
        self.pool = pool
        self.slow = slow

    def upload(self, stream, _offset, _length, _flags):
        stream.upload = self
        self.pool.uploading += 1

    def path(self):
        return "/pool/layer.qcow2"


class _Stream:
    upload = None

    def sendAll(self, _handler, _source):
        # The second copy's upload is still running when the first one has finished.
        time.sleep(0.3 if self.upload.slow else 0)

    def finish(self):
        if self.upload:
            self.upload.pool.uploading -= 1

    def recv(self, _size):
        return b""


class _SourceVolume:
    def infoFlags(self, _flags):
        return (0, 0, 1024)

    def download(self, *_args):
        pass

    def name(self):
        return "layer"


def test_parallel_copies_into_one_pool_never_refresh_during_an_upload(hv, monkeypatch):
    pool = _BusyPool()
    monkeypatch.setattr(hv.conn, "newStream", lambda _flags: _Stream())
    with ThreadPoolExecutor(max_workers=2) as workers:
        copies = [workers.submit(hv.copy_volume, _SourceVolume(), pool, f"layer-{i}") for i in (1, 0)]
        assert [copy.result() for copy in copies] == ["/pool/layer.qcow2"] * 2
    assert pool.refreshes == 2
