"""Baked layers: which nodes share one, what keys it, the throw-away bake lab, and how `up` picks one
(libvirt's test driver stands in for the images pool)."""

import ipaddress
from types import SimpleNamespace

import pytest

from labctl import api, bake, names, render
from labctl.hypervisor import Hypervisor
from labctl.keys import ensure_keys
from labctl.progress import Reporter
from labctl.provision.playbook import load_playbook
from labctl.provision.run import node_packages

from .helpers import make_lab

BASES = {"debian-12": "debian-12-773544568f71.qcow2"}
DOCKER = ("apparmor", "docker.io", "firewalld")


def _packages(lab, **by_node):
    return {node.name: by_node.get(node.name, DOCKER) for node in lab.nodes}


def test_nodes_with_the_same_packages_share_one_layer_sized_for_the_smallest_disk():
    lab = make_lab(nodes=[
        {"name": "rancher-host", "roles": ["rancher"], "disk": "6GiB"},
        {"name": "kube-master", "roles": ["master"], "disk": "5GiB"},
        {"name": "kube-worker", "roles": ["worker"], "disk": "9GiB"},
    ])
    layers = bake.plan(lab, BASES, _packages(lab, **{"rancher-host": ("firewalld",)}))
    assert [(layer.nodes, layer.packages) for layer in layers] == [
        (("rancher-host",), ("firewalld",)),
        (("kube-master", "kube-worker"), DOCKER),
    ]
    assert layers[1].disk == 5 * 2**30
    assert layers[1].volume == f"baked-{layers[1].key}.qcow2"


def test_the_key_changes_with_base_image_source_and_packages_and_nothing_else():
    key = bake.layer_key(BASES["debian-12"], "local", DOCKER)
    assert key == bake.layer_key(BASES["debian-12"], "local", DOCKER)
    assert len({key,
                bake.layer_key("debian-12-000000000000.qcow2", "local", DOCKER),
                bake.layer_key(BASES["debian-12"], "distro", DOCKER),
                bake.layer_key(BASES["debian-12"], "local", DOCKER[:2])}) == 4
    mirror = make_lab(packages={"source": "mirror", "mirror_url": "http://mirror.example/debian"})
    assert bake.source_id(mirror) == "mirror http://mirror.example/debian"


def test_nodes_that_get_no_packages_need_no_layer():
    lab = make_lab()
    assert bake.plan(lab, BASES, _packages(lab, **{n.name: () for n in lab.nodes})) == []


def test_the_bake_lab_has_one_node_per_layer_no_provisioning_and_the_lab_package_source():
    lab = make_lab(packages={"source": "local", "local_port": 8799})
    layers = bake.plan(lab, BASES, _packages(lab, **{"rancher-host": ("firewalld",)}))
    temp = bake.bake_lab(lab, layers, ipaddress.IPv4Network("192.168.241.0/24"))
    assert temp.name.startswith("bake-") and temp.name != lab.name
    assert [n.name for n in temp.nodes] == ["layer-1", "layer-2"]
    assert [n.disk for n in temp.nodes] == [layer.disk for layer in layers]
    assert not temp.provisioning.enabled, "its own nodes must never start from a layer"
    assert temp.packages == lab.packages
    assert str(temp.network.subnet) == "192.168.241.0/24"
    assert bake.bake_lab(lab, layers, temp.network.subnet).name == temp.name, "same layers, same bake lab"


def test_the_install_step_installs_exactly_the_layer_packages_and_orders_firewalld_after_the_network():
    lab = make_lab()
    layer = bake.plan(lab, BASES, _packages(lab))[0]
    step = bake.install_step(load_playbook(), layer)
    assert "apt_install apparmor docker.io firewalld\n" in step.script
    assert "firewalld_boot_order\n" in step.script
    assert "firewalld_boot_order() {" in step.script, "the prelude defining it comes first"


def test_cleanup_removes_the_user_keys_and_cloud_init_state_then_powers_off():
    script = bake.cleanup_script("labctl")
    for needle in ("cloud-init clean --logs --seed", "rm -f /etc/ssh/ssh_host_*", "truncate -s 0 /etc/machine-id",
                   "userdel --force --remove labctl", "/var/lib/labctl/steps", "systemctl poweroff"):
        assert needle in script


@pytest.fixture
def hv():
    with Hypervisor("test:///default") as hv:
        yield hv
        for pool in hv.conn.listAllStoragePools(0):
            if pool.name().startswith("labctl-"):
                for vol in pool.listAllVolumes(0):
                    vol.delete(0)
                if pool.isActive():
                    pool.destroy()
                pool.undefine()


def _images_pool(hv, tmp_path):
    path = tmp_path / "images"
    return hv.ensure_pool(names.IMAGES_POOL, render.pool_xml(names.IMAGES_POOL, path), path)


def _volume(pool, name, capacity, backing=None):
    backing_xml = f"<backingStore><path>{backing}</path><format type='qcow2'/></backingStore>" if backing else ""
    return pool.createXML(f"<volume><name>{name}</name><capacity unit='bytes'>{capacity}</capacity>"
                          f"<target><format type='qcow2'/></target>{backing_xml}</volume>", 0)


def test_up_backs_nodes_with_their_layer_when_it_fits_and_with_the_base_otherwise(hv, tmp_path):
    lab = make_lab(nodes=[
        {"name": "rancher-host", "roles": ["rancher"], "disk": "4GiB"},
        {"name": "kube-master", "roles": ["master", "etcd"], "disk": "8GiB"},
        {"name": "kube-worker", "roles": ["worker"], "disk": "8GiB"},
    ])
    keys = ensure_keys(lab, tmp_path / "ssh")
    records = {"debian-12": SimpleNamespace(sha256="773544568f71" + "0" * 52)}
    pool = _images_pool(hv, tmp_path)
    base = _volume(pool, BASES["debian-12"], 2 * 2**30).path()
    layers = {layer.nodes: layer for layer in bake.plan(lab, BASES, node_packages(lab, keys))}
    assert set(layers) == {("rancher-host",), ("kube-master", "kube-worker")}
    masters = _volume(pool, layers["kube-master", "kube-worker"].volume, 8 * 2**30, base).path()
    # Baked for bigger disks than rancher-host's 4 GiB: an overlay may not shrink it.
    _volume(pool, layers["rancher-host",].volume, 6 * 2**30, base)
    lines = []
    reporter = SimpleNamespace(info=lines.append)
    backing = api._node_backing(hv, lab, keys, records, {"debian-12": base}, reporter)
    assert backing == {"rancher-host": base, "kube-master": masters, "kube-worker": masters}
    assert any("rancher-host" in line and "larger than its disk" in line for line in lines)
    off = lab.model_copy(update={"provisioning": lab.provisioning.model_copy(update={"enabled": False})})
    assert set(api._node_backing(hv, off, keys, records, {"debian-12": base}, Reporter())) == {n.name for n in lab.nodes}
    assert set(api._node_backing(hv, off, keys, records, {"debian-12": base}, Reporter()).values()) == {base}


def test_a_free_subnet_skips_the_ones_libvirt_networks_use(hv):
    used = ipaddress.IPv4Network("192.168.122.0/24")  # the test driver's stock network
    free = ipaddress.IPv4Network("192.168.123.0/24")
    assert hv.free_subnet([used, free]) == free
    with pytest.raises(Exception, match="used by a libvirt network"):
        hv.free_subnet([used])


def test_a_layer_that_backs_a_lab_disk_is_not_removed(hv, tmp_path):
    images = _images_pool(hv, tmp_path)
    layer = _volume(images, "baked-0123456789abcdef.qcow2", 2**30)
    lab_pool = hv.ensure_pool("labctl-t", render.pool_xml("labctl-t", tmp_path / "t"), tmp_path / "t")
    disk = _volume(lab_pool, "kube-master.qcow2", 2**30, layer.path())
    [listed] = api.baked_layers("test:///default")
    assert listed["name"] == layer.name() and listed["used_by"] == [disk.path()]
    with pytest.raises(Exception, match="backs 1 lab disk"):
        api.remove_layer("test:///default", layer.name())
    assert hv.volume(images, layer.name()) is not None
    disk.delete(0)
    api.remove_layer("test:///default", layer.name())
    assert api.baked_layers("test:///default") == []
    with pytest.raises(Exception, match="no baked layer"):
        api.remove_layer("test:///default", layer.name())


def test_a_lab_that_does_not_provision_has_nothing_to_bake():
    lab = make_lab(provisioning={"enabled": False})
    with pytest.raises(Exception, match="provisioning.enabled: false"):
        api.bake_images(lab, "test:///default", reporter=Reporter())
