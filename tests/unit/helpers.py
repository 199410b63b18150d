"""Small builders shared by unit tests."""

from labctl.lab import Lab, parse_lab


def make_lab(**overrides) -> Lab:
    data = {
        "name": "t",
        "network": {"subnet": "192.168.150.0/24"},
        "defaults": {"memory": "1GiB", "disk": "4GiB", "vcpus": 1},
        "nodes": [
            {"name": "rancher-host", "roles": ["rancher"]},
            {"name": "kube-master", "roles": ["master", "etcd"]},
            {"name": "kube-worker", "roles": ["worker"]},
        ],
    }
    data.update(overrides)
    return parse_lab(data, source="test.yaml")
