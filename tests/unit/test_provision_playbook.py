"""Playbook loading and rendering per node and role."""

from __future__ import annotations

import base64
import re
import subprocess

import pytest

from labctl.errors import InvalidInput
from labctl.keys import ensure_keys
from labctl.provision.playbook import PLAYBOOKS_DIR, load_playbook, render_steps
from tests.unit.helpers import make_lab


def rendered(lab, tmp_path):
    keys = ensure_keys(lab, tmp_path / "ssh")
    playbook = load_playbook()
    return {n.name: {s.name: s for s in render_steps(playbook, lab, n, keys)} for n in lab.nodes}, keys


def decoded_writes(script: str) -> dict[str, str]:
    """{path: content} of every `write_file PATH MODE BASE64` with a literal payload."""
    found = {}
    for path, payload in re.findall(r"write_file (\S+) \d+ ([A-Za-z0-9+/=]+)(?:\s|;|$)", script):
        found[path.strip('"')] = base64.b64decode(payload).decode()
    return found


def test_steps_apply_by_role(tmp_path):
    steps, _ = rendered(make_lab(packages={"source": "local"}), tmp_path)
    assert list(steps["rancher-host"]) == ["apt-source", "hosts", "ssh-mesh", "firewalld", "docker"]
    assert list(steps["kube-worker"]) == ["apt-source", "hosts", "ssh-mesh", "kernel", "firewalld", "docker"]


def test_every_rendered_script_is_valid_bash(tmp_path):
    for source in ("local", "distro"):
        steps, _ = rendered(make_lab(packages={"source": source}), tmp_path)
        for node_steps in steps.values():
            for step in node_steps.values():
                check = subprocess.run(["bash", "-n"], input=step.script.encode(), capture_output=True)
                assert check.returncode == 0, (step.name, check.stderr.decode())


def test_lab_key_only_on_rancher_and_master_known_hosts_everywhere(tmp_path):
    steps, keys = rendered(make_lab(), tmp_path)
    private = keys.private_key_path.read_text()
    for name, has_key in (("rancher-host", True), ("kube-master", True), ("kube-worker", False)):
        writes = decoded_writes(steps[name]["ssh-mesh"].script)
        assert (writes.get('$home/.ssh/id_ed25519') == private) is has_key, name
        known = writes["/etc/ssh/ssh_known_hosts"]
        for node in ("rancher-host", "kube-master", "kube-worker"):
            public = keys.host_keys[node].public_openssh.split()[1]
            assert re.search(rf"^{node},{node}\.lab\.test,192\.168\.150\.\d+ ssh-ed25519 {re.escape(public)}$", known, re.M)


def test_hosts_lists_every_node_with_fqdn(tmp_path):
    lab = make_lab()
    steps, _ = rendered(lab, tmp_path)
    script = steps["kube-worker"]["hosts"].script
    for node in lab.nodes:
        assert f"{node.ip} {node.name}.lab.test {node.name}\n" in script
    assert "test \"$(hostname -f)\" = kube-worker.lab.test" in script


def test_firewalld_opens_exactly_the_roles_ports(tmp_path):
    steps, _ = rendered(make_lab(provisioning={"firewall": {"node_ports": {"kube-worker": ["9000-9010/tcp"]}}}), tmp_path)
    assert 'want_ports=" 80/tcp 443/tcp "' in steps["rancher-host"]["firewalld"].script
    worker = steps["kube-worker"]["firewalld"].script
    assert 'want_ports=" 9000-9010/tcp 9099/tcp 10250/tcp 10256/tcp 30000-32767/tcp 8472/udp "' in worker
    assert "6443/tcp" not in worker


FAKE_FIREWALL_CMD = """#!/bin/sh
echo "$*" >> "$CALLS"
case "$*" in
  --get-default-zone) echo public ;;
  *--list-all*) printf 'public (active)\\n  target: default\\n  services: %s\\n  ports: %s\\n  protocols: %s\\n' \\
      "$HAVE_SERVICES" "$HAVE_PORTS" "$HAVE_PROTOCOLS" ;;
  *--list-ports*) [ -z "$NOT_RUNNING" ] || exit 252 ;;
esac
"""


def _run_firewalld_step(script: str, tmp_path, **have: str) -> list[str]:
    """The step's shell with firewall-cmd, apt-get and systemctl faked: the firewall-cmd calls it made."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool, body in (("firewall-cmd", FAKE_FIREWALL_CMD), ("apt-get", "#!/bin/sh\n"), ("systemctl", "#!/bin/sh\n")):
        (bin_dir / tool).write_text(body)
        (bin_dir / tool).chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "NOT_RUNNING": have.get("not_running", ""),
           "HAVE_SERVICES": have.get("services", ""),
           "HAVE_PORTS": have.get("ports", ""), "HAVE_PROTOCOLS": have.get("protocols", "")}
    done = subprocess.run(["bash", "-c", script], env=env, capture_output=True)
    return calls.read_text().splitlines() if done.returncode == 0 else [f"exit {done.returncode}"]


def test_firewalld_changes_the_zone_in_one_call_per_kind_and_reloads_only_after_a_change(tmp_path):
    steps, _ = rendered(make_lab(), tmp_path)
    script = steps["rancher-host"]["firewalld"].script
    calls = _run_firewalld_step(script, tmp_path, services="dhcpv6-client", ports="443/tcp 8080/tcp")
    assert calls == [
        "--get-default-zone",
        "--permanent --zone=public --list-all",
        "--permanent --zone=public --remove-port=8080/tcp",
        "--permanent --zone=public --add-port=80/tcp --add-service=ssh",
        "--reload",
        "--zone=public --list-ports",
    ]
    settled = _run_firewalld_step(script, tmp_path, services="dhcpv6-client ssh", ports="80/tcp 443/tcp")
    assert settled == ["--get-default-zone", "--permanent --zone=public --list-all", "--zone=public --list-ports"]
    stopped = _run_firewalld_step(script, tmp_path, services="ssh", ports="80/tcp 443/tcp", not_running="yes")
    assert stopped == ["exit 252"], "a firewalld that does not run fails the step"


def test_firewall_off_leaves_the_step_out(tmp_path):
    steps, _ = rendered(make_lab(provisioning={"firewall": {"enabled": False}}), tmp_path)
    assert all("firewalld" not in node_steps for node_steps in steps.values())


def test_package_sources(tmp_path):
    local, _ = rendered(make_lab(packages={"source": "local", "local_port": 9999}), tmp_path)
    assert 'line="deb [trusted=yes] http://192.168.150.1:9999/ ${VERSION_CODENAME} main"' in local["kube-master"]["apt-source"].script
    mirror, _ = rendered(make_lab(packages={"source": "mirror", "mirror_url": "http://cache:3142/debian"}), tmp_path)
    script = mirror["kube-master"]["apt-source"].script
    assert "deb http://cache:3142/debian ${VERSION_CODENAME} ${components}" in script
    assert "deb http://cache:3142/debian ${VERSION_CODENAME}-updates ${components}" in script
    distro, _ = rendered(make_lab(packages={"source": "distro"}), tmp_path)
    assert "apt-source" not in distro["kube-master"]


def test_docker_settings_and_version_pin(tmp_path):
    lab = make_lab(provisioning={"docker": {"version": "20.10.24+dfsg1-1+b3", "log_max_size": "50m"}})
    steps, _ = rendered(lab, tmp_path)
    docker = steps["kube-worker"]["docker"]
    assert docker.packages == ("docker.io=20.10.24+dfsg1-1+b3", "apparmor")
    assert "apt-mark hold docker.io" in docker.script
    assert "usermod -aG docker labctl" in docker.script
    daemon = decoded_writes(docker.script)["/etc/docker/daemon.json"]
    assert '"native.cgroupdriver=systemd"' in daemon and '"max-size": "50m"' in daemon and '"max-file": "3"' in daemon


def test_docker_ce_comes_from_dockers_repository(tmp_path):
    steps, _ = rendered(make_lab(provisioning={"docker": {"package": "docker-ce"}}), tmp_path)
    docker = steps["kube-worker"]["docker"]
    assert docker.packages == ("apparmor",)
    assert "apt_install apparmor docker-ce docker-ce-cli containerd.io" in docker.script
    assert "https://download.docker.com/linux" in docker.script


def test_changing_an_input_changes_only_the_affected_hashes(tmp_path):
    before, _ = rendered(make_lab(), tmp_path)
    after, _ = rendered(make_lab(provisioning={"firewall": {"role_ports": {"worker": ["8080/tcp"]}}}), tmp_path)
    changed = {(node, step) for node in before for step in before[node]
               if before[node][step].digest != after[node][step].digest}
    assert changed == {("kube-worker", "firewalld")}


def test_bad_step_file_names_file_and_field(tmp_path):
    (tmp_path / "prelude.sh").write_text("set -e\n")
    (tmp_path / "10-x.yaml").write_text("name: x\ndescription: d\nroles: [workers]\nscript: true\n")
    with pytest.raises(InvalidInput) as failure:
        load_playbook(tmp_path)
    assert "10-x.yaml" in failure.value.brief
    assert "roles" in failure.value.details


def test_template_error_names_step_and_node(tmp_path):
    (tmp_path / "prelude.sh").write_text("set -e\n")
    (tmp_path / "10-x.yaml").write_text("name: x\ndescription: d\nroles: [all]\nscript: echo {{ no_such }}\n")
    lab = make_lab()
    keys = ensure_keys(lab, tmp_path / "ssh")
    with pytest.raises(InvalidInput, match="step x: template error for node rancher-host"):
        render_steps(load_playbook(tmp_path), lab, lab.nodes[0], keys)


def write_file_in_bash(tmp_path, path, content: str) -> int:
    prelude = (PLAYBOOKS_DIR / "prelude.sh").read_text().replace(". /etc/os-release", "")
    payload = base64.b64encode(content.encode()).decode()
    return subprocess.run(["bash", "-c", f'{prelude}\nwrite_file "$1" 0600 "$2"', "_", str(path), payload]).returncode


def test_prelude_write_file_reports_change_and_keeps_exact_bytes(tmp_path):
    target = tmp_path / "sub" / "file"
    assert write_file_in_bash(tmp_path, target, "a\n\n") == 0
    assert target.read_text() == "a\n\n" and oct(target.stat().st_mode & 0o777) == "0o600"
    assert write_file_in_bash(tmp_path, target, "a\n\n") == 1
    assert write_file_in_bash(tmp_path, target, "a\n") == 0
    assert target.read_text() == "a\n"
