import io
import json
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pycdlib
import pytest
import yaml

from labctl import api, names, render
from labctl.keys import ensure_keys

from .helpers import make_lab

SCHEMA_CACHE = Path.home() / ".cache" / "labctl-test" / "cloud-init-schema"


@pytest.fixture(scope="session")
def cloud_config_schema():
    """cloud-init's own cloud-config JSON schema, from the Debian package the guests run."""
    schema = SCHEMA_CACHE / "schema-cloud-config-v1.json"
    if not schema.exists():
        work = SCHEMA_CACHE / "deb"
        work.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", "cloud-init"], cwd=work, check=True, capture_output=True)
        deb = next(work.glob("cloud-init_*.deb"))
        subprocess.run(["dpkg-deb", "-x", deb, work / "x"], check=True)
        found = next((work / "x").rglob("schema-cloud-config-v1.json"))
        shutil.copy(found, schema)
    return json.loads(schema.read_text())


@pytest.fixture
def lab_and_keys(tmp_path):
    lab = make_lab()
    return lab, ensure_keys(lab, tmp_path / "ssh")


def test_user_data_passes_cloud_inits_schema(lab_and_keys, cloud_config_schema):
    lab, keys = lab_and_keys
    for node in lab.nodes:
        text = render.cloud_init(lab, node, keys)["user-data"]
        assert text.startswith("#cloud-config\n")
        data = yaml.safe_load(text)
        jsonschema.validate(data, cloud_config_schema)
        assert data["hostname"] == node.name
        assert data["fqdn"] == f"{node.name}.lab.test"
        assert data["users"][0]["ssh_authorized_keys"] == [keys.public_key]
        assert data["ssh_keys"]["ed25519_public"] == keys.host_keys[node.name].public_openssh
        assert data["ssh_keys"]["ed25519_private"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
        assert "packages" not in data


def test_schema_check_catches_a_bad_document(cloud_config_schema):
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"growpart": {"mode": "sideways"}}, cloud_config_schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"ssh_genkeytypes": []}, cloud_config_schema)


def test_packages_are_rendered_when_asked(tmp_path):
    lab = make_lab(defaults={"packages": ["htop", "jq"]})
    keys = ensure_keys(lab, tmp_path / "ssh")
    data = yaml.safe_load(render.cloud_init(lab, lab.nodes[0], keys)["user-data"])
    assert data["packages"] == ["htop", "jq"]


def test_network_config_matches_the_nic_by_mac(lab_and_keys):
    lab, keys = lab_and_keys
    node = lab.node("kube-worker")
    net = yaml.safe_load(render.cloud_init(lab, node, keys)["network-config"])
    assert net["version"] == 2
    (eth,) = net["ethernets"].values()
    assert eth == {"match": {"macaddress": node.mac}, "dhcp4": True}
    meta = yaml.safe_load(render.cloud_init(lab, node, keys)["meta-data"])
    assert meta == {"instance-id": "labctl-t-kube-worker", "local-hostname": "kube-worker"}


def test_seed_iso_is_a_cidata_volume_with_the_three_files(lab_and_keys):
    lab, keys = lab_and_keys
    files = render.cloud_init(lab, lab.nodes[0], keys)
    iso = pycdlib.PyCdlib()
    iso.open_fp(io.BytesIO(render.seed_iso(files)))
    try:
        assert iso.pvd.volume_identifier.decode().strip() == "cidata"
        for name, text in files.items():
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            assert out.getvalue().decode() == text
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, joliet_path=f"/{name}")
            assert out.getvalue().decode() == text
    finally:
        iso.close()


def _validate_xml(tmp_path, name, text, schema):
    path = tmp_path / name
    path.write_text(text)
    proc = subprocess.run(["virt-xml-validate", str(path), schema], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("domain_type", ["kvm", "qemu"])
def test_domain_xml_passes_libvirts_schema(tmp_path, lab_and_keys, domain_type):
    lab, _ = lab_and_keys
    node = lab.node("kube-master")
    xml = render.domain_xml(lab, node, domain_type=domain_type, disk_path="/pool/d.qcow2",
                            seed_path="/pool/s.iso", console_log="/state/console.log")
    _validate_xml(tmp_path, "domain.xml", xml, "domain")
    assert f'<domain type="{domain_type}">' in xml
    assert ("host-passthrough" in xml) == (domain_type == "kvm")
    assert names.owned_uuid("domain", "labctl-t-kube-master") in xml
    assert node.mac in xml and "org.qemu.guest_agent.0" in xml and "/state/console.log" in xml


def test_network_and_pool_xml_pass_libvirts_schema(tmp_path):
    lab = make_lab()
    xml = render.network_xml(lab)
    _validate_xml(tmp_path, "network.xml", xml, "network")
    for node in lab.nodes:
        assert f'<host mac="{node.mac}" name="{node.name}" ip="{node.ip}"/>' in xml
    assert '<bridge name="lcbr-' in xml
    _validate_xml(tmp_path, "pool.xml", render.pool_xml("labctl-t", tmp_path), "storagepool")


def test_a_broken_domain_fails_the_schema_check(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text("<domain type='qemu'><name>x</name><vcpu>lots</vcpu></domain>")
    assert subprocess.run(["virt-xml-validate", str(path), "domain"], capture_output=True).returncode != 0


def test_render_command_writes_everything_and_touches_no_hypervisor(tmp_path):
    lab = make_lab()
    written = api.render_lab(lab, tmp_path / "out")
    rel = sorted(str(p.relative_to(tmp_path / "out")) for p in written)
    assert "network.xml" in rel
    for node in lab.nodes:
        for f in ("user-data", "meta-data", "network-config", "seed.iso", "domain.xml"):
            assert f"{node.name}/{f}" in rel


def test_keys_are_stable_and_private(tmp_path):
    lab = make_lab()
    first = ensure_keys(lab, tmp_path / "ssh")
    second = ensure_keys(lab, tmp_path / "ssh")
    assert first == second
    assert (first.private_key_path.stat().st_mode & 0o777) == 0o600
    lines = first.known_hosts_path.read_text().splitlines()
    assert len(lines) == 3
    assert lines[1].startswith("kube-master,kube-master.lab.test,192.168.150.12 ssh-ed25519 ")
