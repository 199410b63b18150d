"""The `kubernetes:` section: defaults, compatibility rejections with reasons, lab-level checks."""

import pytest

from labctl.errors import InvalidInput
from labctl.kube import compat
from labctl.kube.checks import check_lab, warnings
from labctl.lab import parse_lab

REFERENCE_NODES = [
    {"name": "rancher-host", "roles": ["rancher"], "memory": "4GiB"},
    {"name": "kube-master", "roles": ["master"], "memory": "4GiB"},
    {"name": "kube-worker", "roles": ["worker"], "memory": "4GiB"},
]


def lab_with(kubernetes, nodes=REFERENCE_NODES):
    return parse_lab({"name": "ref", "nodes": nodes, "kubernetes": kubernetes})


def rejection(kubernetes, nodes=REFERENCE_NODES) -> str:
    with pytest.raises(InvalidInput) as caught:
        lab_with(kubernetes, nodes)
    return str(caught.value)


def test_seed_001_settings_load_with_current_version():
    lab = lab_with({
        "distro": "kubeadm", "version": "v1.35.3", "kube_proxy_mode": "nftables", "cluster_name": "tk8s",
        "pod_subnet": "10.244.0.0/21", "service_subnet": "10.98.0.0/24", "dns_domain": "tk8s.k8s",
        "node_cidr_mask_size": 25,
        "kubelet": {"max_pods": 80, "container_log_max_size": "1Mi", "container_log_max_files": 3},
    })
    kube = lab.kubernetes
    assert kube.minor == (1, 35)
    assert kube.cni_or_default == "canal"
    assert str(kube.cluster_dns_ip) == "10.98.0.10"
    assert kube.warnings() == []


def test_defaults_per_distro():
    kube = lab_with({"distro": "rke2"}).kubernetes
    assert kube.pinned_version == compat.DEFAULT_VERSIONS["rke2"]
    assert kube.cni_or_default == "canal"
    assert str(kube.pod_subnet_or_default) == "10.42.0.0/16"
    assert str(kube.service_subnet_or_default) == "10.43.0.0/16"


@pytest.mark.parametrize("tag", ["latest", "stable", "Latest"])
def test_moving_versions_are_rejected(tag):
    message = rejection({"distro": "kubeadm", "version": tag})
    assert "kubernetes.version" in message and "pin a release" in message


def test_rancher_moving_version_is_rejected():
    message = rejection({"distro": "rke2", "rancher": {"enabled": True, "version": "stable"}})
    assert "kubernetes.rancher.version" in message and "pin a release" in message


def test_nftables_before_131_is_rejected_with_reason():
    message = rejection({"distro": "kubeadm", "version": "v1.30.4", "kube_proxy_mode": "nftables"})
    assert "nftables needs Kubernetes 1.31" in message


def test_nftables_beta_is_accepted_with_warning():
    kube = lab_with({"distro": "kubeadm", "version": "v1.31.2", "kube_proxy_mode": "nftables"}).kubernetes
    assert any("beta" in w for w in kube.warnings())


def test_kubeadm_version_outside_pkgs_range_is_rejected():
    message = rejection({"distro": "kubeadm", "version": "v1.22.0"})
    assert "pkgs.k8s.io" in message


def test_version_format_must_match_distro():
    message = rejection({"distro": "rke2", "version": "v1.34.6"})
    assert "v1.34.6+rke2r3" in message


def test_rke1_version_it_never_shipped_is_rejected():
    message = rejection({"distro": "rke", "version": "v1.33.1-rancher1-1"})
    assert "never shipped" in message and "v1.32.5-rancher1-1" in message


def test_rke1_is_accepted_with_eol_warning_naming_rke2():
    kube = lab_with({"distro": "rke", "version": "v1.32.5-rancher1-1"}).kubernetes
    (warning,) = kube.warnings()
    assert "end of life" in warning and "RKE2" in warning


def test_rancher_version_not_supporting_cluster_version_is_rejected():
    message = rejection({"distro": "rke2", "version": "v1.30.14+rke2r2", "rancher": {"enabled": True, "version": "v2.14.1"}})
    assert "Rancher v2.14.1 manages Kubernetes 1.33 to 1.35" in message
    assert "github.com/rancher/rancher/issues" in message


def test_rancher_that_dropped_rke1_is_rejected_for_rke():
    message = rejection({"distro": "rke", "rancher": {"enabled": True, "version": "v2.12.4", "cluster_version": "v1.33.10+rke2r3"}})
    assert "no longer manages RKE1" in message


def test_seed_000_course_rke_with_rancher_211_loads():
    kube = lab_with({
        "distro": "rke", "version": "v1.32.5-rancher1-1",
        "rancher": {"enabled": True, "version": "v2.11.3", "cluster_version": "v1.30.14+rke2r2",
                    "cert_manager_version": "v1.18.2"},
    }).kubernetes
    assert kube.rancher.mode == "helm"


def test_cert_manager_must_cover_rancher_cluster():
    message = rejection({"distro": "rke2", "rancher": {"enabled": True, "cert_manager_version": "v1.18.2"}})
    assert "cert_manager_version v1.18.2 supports Kubernetes 1.29 to 1.33" in message


def test_unknown_rancher_minor_is_rejected():
    message = rejection({"distro": "rke2", "rancher": {"enabled": True, "version": "v2.5.3"}})
    assert "labctl knows Rancher" in message


def test_docker_runtime_only_for_kubeadm():
    message = rejection({"distro": "rke2", "runtime": "docker"})
    assert "kubeadm only" in message


def test_overlapping_subnets_are_rejected():
    message = rejection({"distro": "kubeadm", "pod_subnet": "10.96.0.0/16", "service_subnet": "10.96.0.0/12"})
    assert "overlaps" in message


def test_unknown_key_names_allowed_keys():
    message = rejection({"distro": "kubeadm", "proxy_mode": "ipvs"})
    assert "kubernetes.proxy_mode: unknown key" in message and "kube_proxy_mode" in message


def test_field_error_carries_description_as_fix():
    message = rejection({"distro": "kubeadm", "kubelet": {"container_log_max_size": "1MB"}})
    assert "kubernetes.kubelet.container_log_max_size" in message and "fix:" in message


def test_check_lab_needs_a_master():
    lab = lab_with({"distro": "kubeadm"}, nodes=[{"name": "w", "roles": ["worker"]}])
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab, source="lab.yaml")
    assert "kubernetes.distro kubeadm: no node has role master" in caught.value.details
    assert caught.value.brief.startswith("lab.yaml:")


def test_check_lab_rancher_needs_one_rancher_node():
    nodes = [{"name": "m", "roles": ["master", "worker"]}]
    lab = lab_with({"distro": "rke2", "rancher": {"enabled": True}}, nodes=nodes)
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab)
    assert "kubernetes.rancher.enabled" in caught.value.details and "roles: [rancher]" in caught.value.details


def test_check_lab_rke_needs_rancher_node_to_run_rke_up():
    lab = lab_with({"distro": "rke"}, nodes=[{"name": "m", "roles": ["master", "worker"]}])
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab)
    assert "rke up" in caught.value.details


def test_check_lab_rke_needs_a_worker_plane_host():
    nodes = [{"name": "r", "roles": ["rancher"]}, {"name": "m", "roles": ["master", "etcd"]}]
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab_with({"distro": "rke"}, nodes=nodes))
    assert "kubernetes.distro rke: RKE needs a worker plane host" in caught.value.details


def test_check_lab_accepts_reference_lab():
    check_lab(lab_with({"distro": "rke2", "rancher": {"enabled": True}}))


@pytest.mark.parametrize("count", [2, 4])
def test_even_number_of_rke2_servers_is_accepted_with_a_quorum_warning(count):
    nodes = [{"name": f"m{i}", "roles": ["master", "etcd"], "memory": "4GiB"} for i in range(count)]
    lab = lab_with({"distro": "rke2"}, nodes=nodes)
    check_lab(lab)
    (note,) = warnings(lab)
    assert f"quorum is {count // 2 + 1}" in note and "odd number" in note


@pytest.mark.parametrize("count", [1, 3])
def test_odd_number_of_servers_warns_nothing(count):
    nodes = [{"name": f"m{i}", "roles": ["master", "etcd"], "memory": "4GiB"} for i in range(count)]
    assert warnings(lab_with({"distro": "rke2"}, nodes=nodes)) == []


def test_rke2_server_below_the_memory_floor_is_rejected():
    nodes = [{"name": "m0", "roles": ["master"], "memory": "4GiB"}, {"name": "m1", "roles": ["master"], "memory": "1792MiB"}]
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab_with({"distro": "rke2"}, nodes=nodes))
    assert "master m1 has 1792 MiB; fix: give it memory of at least 3500MiB" in caught.value.details


def test_check_lab_ha_kubeadm_without_balancer_host():
    nodes = [{"name": f"m{i}", "roles": ["master"]} for i in range(3)]
    with pytest.raises(InvalidInput) as caught:
        check_lab(lab_with({"distro": "kubeadm"}, nodes=nodes))
    assert "load balancer" in caught.value.details


def test_compat_table_rows_cite_sources_and_are_ordered():
    minors = [row.minor for row in compat.RANCHER]
    assert minors == sorted(minors)
    for row in compat.RANCHER:
        assert row.source.startswith("https://")
        assert row.kubernetes[0] <= row.kubernetes[1]
    assert compat.DEFAULT_VERSIONS["rke"] in compat.RKE_RELEASES[compat.RKE_DEFAULT_RELEASE]
