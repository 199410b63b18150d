import pytest
import yaml

from labctl.errors import InvalidInput
from labctl.lab import Role, load_lab, parse_lab, parse_size

from .helpers import make_lab


def problems(data, source="lab.yaml"):
    with pytest.raises(InvalidInput) as info:
        parse_lab(data, source=source)
    assert info.value.exit_code == 2
    assert info.value.brief.startswith(source)
    return info.value.details


def test_defaults_fill_nodes_and_addresses_are_predictable():
    lab = make_lab()
    master = lab.node("kube-master")
    assert master.memory_mib == 1024 and master.vcpus == 1 and master.image == "debian-12"
    assert [str(n.ip) for n in lab.nodes] == ["192.168.150.11", "192.168.150.12", "192.168.150.13"]
    assert make_lab().nodes == lab.nodes, "the same lab file must give the same MACs and IPs"
    assert all(n.mac.startswith("52:54:00:") for n in lab.nodes)
    assert len({n.mac for n in lab.nodes}) == 3
    assert lab.nodes_with(Role.master) == (master,)
    assert lab.fqdn(master) == "kube-master.lab.test"


def test_subnet_is_derived_from_the_name_when_left_out():
    a = parse_lab({"name": "alpha", "nodes": [{"name": "n1", "roles": ["worker"]}]})
    assert a.network.subnet.prefixlen == 24
    assert a.network.subnet == parse_lab({"name": "alpha", "nodes": [{"name": "n1", "roles": ["worker"]}]}).network.subnet


@pytest.mark.parametrize("text, expected", [("4GiB", 4 * 1024**3), ("512MiB", 512 * 1024**2), ("12G", 12 * 1024**3),
                                            ("1.5GiB", int(1.5 * 1024**3)), (1024, 1024)])
def test_sizes(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("data, field, fragment", [
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "memroy": "1G"}]},
     "nodes[0] (a).memroy", "unknown key; fix: remove it or use one of: disk, image, ip, mac, memory"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["boss"]}]}, "nodes[0] (a).roles[0]", "'master'"),
    ({"name": "x", "nodes": [{"name": "a", "roles": []}]}, "nodes[0] (a)", "give at least one of master"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "memory": "lots"}]},
     "nodes[0] (a).memory", "fix: RAM such as '4GiB'"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "memory": "100MiB"}]},
     "nodes[0] (a)", "memory must be at least 512MiB"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "disk": "1GiB"}]},
     "nodes[0] (a)", "disk must be at least 2GiB"),
    ({"name": "x", "nodes": [{"name": "Big_Name", "roles": ["master"]}]}, "nodes[0] (Big_Name).name",
     "fix: lower-case letters"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "vcpus": 0}]}, "nodes[0] (a).vcpus", "fix: virtual CPUs"),
    ({"name": "x", "nodes": []}, "lab", "a lab needs at least one node"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"]}, {"name": "a", "roles": ["worker"]}]},
     "lab", "repeated: a"),
    ({"name": "x", "network": {"subnet": "10.0.0.0/24"}, "nodes": [{"name": "a", "roles": ["master"], "ip": "10.0.1.5"}]},
     "lab", "ip 10.0.1.5 is not a usable host address in 10.0.0.0/24"),
    ({"name": "x", "network": {"subnet": "10.0.0.0/24"}, "nodes": [{"name": "a", "roles": ["master"], "ip": "10.0.0.1"}]},
     "lab", "gateway 10.0.0.1"),
    ({"name": "x", "network": {"subnet": "10.0.0.0/16"}, "nodes": [{"name": "a", "roles": ["master"]}]},
     "lab", "must be a /24 to /28"),
    ({"name": "x", "network": {"subnet": "not-a-net"}, "nodes": [{"name": "a", "roles": ["master"]}]},
     "network.subnet", "fix: a /24 to /28"),
    ({"name": "x", "accel": "warp", "nodes": [{"name": "a", "roles": ["master"]}]}, "accel", "fix: auto, kvm or tcg"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"]}], "netwrk": {}}, "netwrk", "unknown key"),
    ({"name": "x", "defaults": {"ram": "1G"}, "nodes": [{"name": "a", "roles": ["master"]}]},
     "defaults.ram", "unknown key"),
    ({"name": "x", "nodes": [{"name": "a", "roles": ["master"], "mac": "00:11:22:33:44:55"}]},
     "nodes[0] (a).mac", "fix: a MAC such as"),
    ({"name": "x", "timeouts": {"ready": 1}, "nodes": [{"name": "a", "roles": ["master"]}]},
     "timeouts.ready", "fix: seconds"),
])
def test_every_bad_input_names_its_field_and_fix(data, field, fragment):
    details = problems(data)
    line = next((ln for ln in details.splitlines() if ln.strip().startswith(field + ":")), None)
    assert line is not None, f"no line for {field} in:\n{details}"
    assert fragment in line


def test_lab_file_errors_name_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nnodes: [ {name: a, roles: [master]\n")
    with pytest.raises(InvalidInput, match="broken.yaml: not valid YAML"):
        load_lab(path)
    path.write_text("- just a list\n")
    with pytest.raises(InvalidInput, match="a lab file is a YAML mapping"):
        load_lab(path)


def test_unknown_lab_name_lists_the_known_ones():
    with pytest.raises(InvalidInput) as info:
        load_lab("no-such-lab")
    assert "default" in info.value.resolution and "rancher-lab" in info.value.resolution


def test_lab_name_defaults_to_the_file_name(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump({"nodes": [{"name": "solo", "roles": ["master"]}]}))
    lab, found = load_lab(path)
    assert lab.name == "mini" and found == path


@pytest.mark.parametrize("name", ["default", "rancher-lab", "kubeadm-lab"])
def test_shipped_inventories_are_valid(name):
    lab, _ = load_lab(name)
    assert {r for n in lab.nodes for r in n.roles} >= {Role.master, Role.worker}


def test_reference_lab_matches_the_seed():
    lab, _ = load_lab("rancher-lab")
    assert [n.name for n in lab.nodes] == ["rancher-host", "kube-master", "kube-worker"]
    for node in lab.nodes:
        assert (node.memory_mib, node.disk // 1024**3, node.vcpus) == (4096, 12, 2)
        assert node.image.startswith("ubuntu-")
