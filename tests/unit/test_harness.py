"""The e2e harness's pure parts: which leftovers it claims, and how it spots a route out."""

from tests.e2e import harness


def test_owner_pid_is_read_from_names_the_harness_makes():
    assert harness.owner_pid("labctl-e2e-4242-0a1b2c3d") == 4242


def test_names_the_harness_did_not_make_are_never_claimed():
    for name in ("labctl-e2e-kept-4242-0a1b2c3d", "labctl-e2e-4242", "lab-4242-0a1b2c3d",
                 "other-labctl-e2e-4242-0a1b2c3d", "labctl-e2e-4242-0a1b2c3d-x"):
        assert harness.owner_pid(name) is None, name


def test_default_route_is_detected_in_either_family():
    assert harness.has_default_route("default via 10.0.0.1 dev eth0\n10.0.0.0/24 dev eth0\n")
    assert harness.has_default_route("fe80::/64 dev br0 proto kernel\ndefault via fe80::1 dev br0 metric 1024\n")


def test_subnet_and_local_routes_are_not_a_way_out():
    routes = ("192.168.251.0/24 dev virbr-e2e proto kernel scope link src 192.168.251.1\n"
              "local 127.0.0.1 dev lo table local proto kernel scope host src 127.0.0.1\n")
    assert not harness.has_default_route(routes)
    assert not harness.has_default_route("")
