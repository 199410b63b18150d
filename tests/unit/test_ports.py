"""Port tables: what each role opens per distro and CNI, with sources, and the docs showing them."""

from __future__ import annotations

from pathlib import Path

import pytest

from labctl.errors import InvalidInput
from labctl.provision import ports
from tests.unit.helpers import make_lab

DOCS = Path(__file__).resolve().parents[2] / "docs" / "provisioning.md"


def node_ports(lab, name):
    return ports.ports_for(lab, lab.node(name))


def test_default_lab_upstream_kubernetes_ports():
    lab = make_lab()
    assert node_ports(lab, "rancher-host") == ["80/tcp", "443/tcp"]
    master = node_ports(lab, "kube-master")
    assert {"6443/tcp", "2379-2380/tcp", "10250/tcp", "10257/tcp", "10259/tcp"} <= set(master)
    worker = node_ports(lab, "kube-worker")
    assert {"10250/tcp", "10256/tcp", "30000-32767/tcp"} <= set(worker)
    assert "6443/tcp" not in worker and "2379-2380/tcp" not in worker


def test_rke2_servers_have_supervisor_and_etcd_metrics():
    lab = make_lab(kubernetes={"distro": "rke2"})
    master = node_ports(lab, "kube-master")
    assert {"9345/tcp", "6443/tcp", "2381/tcp", "8472/udp", "9099/tcp"} <= set(master)
    assert "9345/tcp" not in node_ports(lab, "kube-worker")


def test_rke_nodes_have_ingress_health_and_canal():
    lab = make_lab(kubernetes={"distro": "rke"})
    worker = node_ports(lab, "kube-worker")
    assert {"10254/tcp", "8472/udp", "9099/tcp", "30000-32767/udp", "80/tcp", "443/tcp"} <= set(worker)
    assert {"2379/tcp", "2380/tcp"} <= set(node_ports(lab, "kube-master"))


def test_cni_decides_overlay_ports():
    calico = make_lab(kubernetes={"distro": "kubeadm", "cni": "calico"})
    assert {"179/tcp", "4789/udp", "5473/tcp"} <= set(node_ports(calico, "kube-worker"))
    assert ports.protocols_for(calico, calico.node("kube-worker")) == ["ipip"]
    flannel = make_lab(kubernetes={"distro": "rke2", "cni": "flannel"})
    assert "4789/udp" in node_ports(flannel, "kube-worker") and "8472/udp" not in node_ports(flannel, "kube-worker")


def test_rancher_only_node_gets_no_pod_network_ports():
    lab = make_lab(kubernetes={"distro": "rke2"})
    assert node_ports(lab, "rancher-host") == ["80/tcp", "443/tcp"]


def test_lab_file_adds_ports_per_role_and_node():
    lab = make_lab(provisioning={"firewall": {"role_ports": {"rancher": ["8443/tcp"]},
                                              "node_ports": {"kube-worker": ["5000-5005/udp"]}}})
    assert node_ports(lab, "rancher-host") == ["80/tcp", "443/tcp", "8443/tcp"]
    assert "5000-5005/udp" in node_ports(lab, "kube-worker")
    rule = next(r for r in ports.rules_for(lab, lab.node("kube-worker")) if r.port == "5000-5005/udp")
    assert rule.source == "provisioning.firewall.node_ports.kube-worker"


@pytest.mark.parametrize("bad", ["8080", "8080/sctp", "70000/tcp", "90-80/tcp"])
def test_bad_port_is_rejected_with_field(bad):
    with pytest.raises(InvalidInput) as failure:
        make_lab(provisioning={"firewall": {"role_ports": {"worker": [bad]}}})
    assert "provisioning.firewall.role_ports.worker" in failure.value.details


def test_unknown_node_in_node_ports():
    lab = make_lab(provisioning={"firewall": {"node_ports": {"nope": ["1/tcp"]}}})
    with pytest.raises(InvalidInput, match="nope"):
        ports.check_node_ports(lab)


def test_every_upstream_rule_cites_a_page_and_the_docs_show_it():
    docs = DOCS.read_text()
    rows = [r for table in ports.TABLES.values() for rules in table.values() for r in rules]
    rows += [r for rules in ports.CNI_TABLES.values() for r in rules] + list(ports.RKE2_FLANNEL)
    for rule in rows:
        assert rule.source.startswith("https://"), rule
        assert rule.source in docs, f"docs/provisioning.md does not cite {rule.source}"
    for distro, table in ports.TABLES.items():
        if distro == "none":
            continue
        for role, rules in table.items():
            line = f"| {distro} | {role} | {', '.join(r.port for r in rules)} |"
            assert line in docs, f"docs/provisioning.md lacks the row {line}"
    for cni, rules in ports.CNI_TABLES.items():
        line = f"| {cni} | {', '.join(r.port for r in rules)} |"
        assert line in docs, f"docs/provisioning.md lacks the row {line}"


def test_rancher_node_opens_the_api_port_when_it_balances_several_kubeadm_masters():
    two_masters = [{"name": "rancher-host", "roles": ["rancher"]},
                   {"name": "kube-master", "roles": ["master", "etcd"]},
                   {"name": "kube-worker", "roles": ["master", "etcd"]}]
    balanced = make_lab(nodes=two_masters, kubernetes={"distro": "kubeadm"})
    assert node_ports(balanced, "rancher-host") == ["80/tcp", "443/tcp", "6443/tcp"]
    # One master needs no balancer; RKE2 servers balance themselves.
    assert "6443/tcp" not in node_ports(make_lab(kubernetes={"distro": "kubeadm"}), "rancher-host")
    assert "6443/tcp" not in node_ports(make_lab(nodes=two_masters, kubernetes={"distro": "rke2"}), "rancher-host")
