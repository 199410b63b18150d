"""Rancher on the rancher node (helm on its own single-node RKE2, or the single container), and the
import of the lab's cluster through Rancher's API."""

from __future__ import annotations

import json
import secrets
import shlex
from pathlib import Path

import yaml

from labctl.errors import CommandFailed, WaitTimeout
from labctl.kube import artifacts, compat, remote, render, rke2
from labctl.kube.cluster import Control, write_private
from labctl.lab import Lab
from labctl.progress import Reporter
from labctl.transport import Executor

PASSWORD_FILE = "rancher-bootstrap-password"
DATA_DIR = "/var/lib/labctl/rancher"
ENV_FILE = "/etc/labctl/rancher.env"
HELM = "/usr/local/bin/helm"
JETSTACK_REPO = "https://charts.jetstack.io"
RANCHER_REPO = "https://releases.rancher.com/server-charts/stable"


def bootstrap_password(state_dir: Path, reporter: Reporter) -> str:
    """The lab's Rancher bootstrap password: generated once, kept 0600 in the lab state, printed once."""
    path = state_dir / PASSWORD_FILE
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(18)
    write_private(path, password + "\n")
    reporter.info(f"Rancher bootstrap password (stored in {path}): {password}")
    return password


# HTTPS from the rancher node to its own Rancher, as `curl -ksS --fail --resolve HOST:PORT:127.0.0.1` would do
# it, but in python3: every labctl guest has python3 (cloud-init needs it), minimal Debian images lack curl.
# Arguments: METHOD TOKEN HAS_BODY URL; the body comes on stdin; an HTTP error exits 22 as curl --fail does.
_HTTPS_CLIENT = """
import http.client, socket, ssl, sys, urllib.parse
method, token, has_body, url = sys.argv[1:5]
parts = urllib.parse.urlsplit(url)
context = ssl.create_default_context()
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
class Local(http.client.HTTPSConnection):
    def connect(self):
        self.sock = context.wrap_socket(socket.create_connection(("127.0.0.1", self.port), self.timeout),
                                        server_hostname=self.host)
headers = {"Authorization": "Bearer " + token} if token else {}
body = sys.stdin.buffer.read() if has_body == "1" else None
if body is not None:
    headers["Content-Type"] = "application/json"
try:
    connection = Local(parts.hostname, parts.port or 443, context=context, timeout=60)
    connection.request(method, parts.path + ("?" + parts.query if parts.query else ""), body=body, headers=headers)
    response = connection.getresponse()
    data = response.read()
except OSError as exc:
    sys.stderr.write(f"{method} {url}: {exc}\\n")
    sys.exit(7)
sys.stdout.write(data.decode(errors="replace"))
if response.status >= 400:
    sys.stderr.write(f"{method} {url}: the server answered HTTP {response.status}\\n")
    sys.exit(22)
"""


def https_command(method: str, url: str, *, token: str = "", body: bool = False) -> str:
    """The shell command that makes one request from the rancher node to url there (body: JSON on stdin)."""
    return f"python3 -c {shlex.quote(_HTTPS_CLIENT)} {method} {shlex.quote(token)} {int(body)} {shlex.quote(url)}"


def wait_up(lab: Lab, executor: Executor, *, timeout: float) -> None:
    url = f"https://{render.rancher_hostname(lab)}/ping"
    check = lambda: executor.run(https_command("GET", url), check=False, timeout=30).stdout.strip() == "pong"  # noqa: E731
    if not remote.wait_until(check, timeout=timeout, interval=10):
        raise WaitTimeout(f"Rancher did not answer {url} within {timeout:.0f} s",
                          resolution="see `kubectl -n cattle-system get pods` (helm) or `docker logs rancher` on the rancher node")


def install_helm_mode(lab: Lab, executor: Executor, password: str, reporter: Reporter) -> None:
    rancher_cfg = lab.kubernetes.rancher
    node = render.rancher_node(lab)
    assert node is not None
    rke2.install(node, executor, reporter, version=rancher_cfg.cluster_version, server=True,
                 artifacts_root=rancher_cfg.artifacts)
    rke2.start(node, executor, render.rancher_local_rke2_config(lab, node), reporter, server=True)
    local = rke2.control(node)
    env = f"KUBECONFIG={rke2.KUBECONFIG} PATH=$PATH:/var/lib/rancher/rke2/bin"
    reporter.phase(node.name, "rancher", "helm and cert-manager")
    if rancher_cfg.artifacts is not None:
        remote.push_file(executor, rancher_cfg.artifacts / "helm" / "bin" / "helm", HELM, mode=0o755)
        charts = f"{remote.STAGE_DIR}/charts"
        cert_archive, rancher_archive = (archive for _, _, archive in artifacts.rancher_charts(lab))
        remote.stage(executor, rancher_cfg.artifacts / "charts", [Path(cert_archive.name), Path(rancher_archive.name)], charts)
        cert_chart, rancher_chart = f"{charts}/{cert_archive.name}", f"{charts}/{rancher_archive.name}"
        version_args: list[str] = []
    else:
        remote.sh(executor, f"curl -fsSL https://get.helm.sh/helm-{compat.DEFAULT_HELM}-linux-amd64.tar.gz "
                            f"| tar -xz -C /usr/local/bin --strip-components=1 linux-amd64/helm", timeout=600)
        remote.sh(executor, f"{env} {HELM} repo add jetstack {JETSTACK_REPO} --force-update && "
                            f"{env} {HELM} repo add rancher-stable {RANCHER_REPO} --force-update")
        cert_chart, rancher_chart = "jetstack/cert-manager", "rancher-stable/rancher"
        version_args = ["--version", rancher_cfg.version.removeprefix("v")]
    args = render.cert_manager_install_args(lab, cert_chart)
    remote.sh(executor, f"{env} {HELM} {shlex.join(args)}", timeout=1200)
    reporter.phase(node.name, "rancher", f"rancher chart {rancher_cfg.version}")
    values = yaml.safe_dump(render.rancher_helm_values(lab, password))
    executor.push(values.encode(), "/etc/labctl/rancher-values.yaml", mode=0o600, sudo=True)
    install = ["upgrade", "--install", "rancher", rancher_chart, "--namespace", "cattle-system",
               "--create-namespace", "--values", "/etc/labctl/rancher-values.yaml", *version_args]
    remote.sh(executor, f"{env} {HELM} {shlex.join(install)}", timeout=1200)
    local.run(executor, "-n cattle-system rollout status deploy/rancher --timeout=20m", timeout=1300)


def install_docker_mode(lab: Lab, executor: Executor, password: str, reporter: Reporter) -> None:
    rancher_cfg = lab.kubernetes.rancher
    image = artifacts.rancher_image(lab)
    reporter.phase(executor.name, "rancher", f"{image} container")
    if not remote.succeeds(executor, "command -v docker"):
        raise CommandFailed(f"{executor.name}: Docker is not installed; rancher.mode docker runs Rancher in it",
                            resolution="enable the Docker provisioning step for the rancher node, or use mode: helm")
    # `docker inspect NAME` would also match an image or volume called rancher.
    if remote.succeeds(executor, "docker container inspect rancher"):
        remote.sh(executor, "docker start rancher")
        return
    if rancher_cfg.artifacts is not None:
        images = rancher_cfg.artifacts / "images"
        remote.stage(executor, images, [p.relative_to(images) for p in sorted(images.glob("*.tar"))],
                     f"{remote.STAGE_DIR}/rancher-images")
        remote.sh(executor, f"for image in {remote.STAGE_DIR}/rancher-images/*.tar; do docker load -i \"$image\"; done",
                  timeout=1800)
    # From a 0600 file, so the password shows neither in the node's process list nor in a failed command's message.
    executor.push(f"CATTLE_BOOTSTRAP_PASSWORD={password}\n".encode(), ENV_FILE, mode=0o600, sudo=True)
    remote.sh(executor, " ".join([
        "docker run -d --name rancher --restart=unless-stopped --privileged -p 80:80 -p 443:443",
        f"-v {DATA_DIR}:/var/lib/rancher --env-file {ENV_FILE} {image}",
    ]), timeout=1800)


class RancherAPI:
    """Rancher's v3 API, called on the rancher node itself (its own address stands for the hostname)."""

    def __init__(self, lab: Lab, executor: Executor):
        self.lab, self.executor = lab, executor
        self.base = f"https://{render.rancher_hostname(lab)}"
        self.token: str | None = None

    def call(self, method: str, path: str, body: dict | None = None) -> dict:
        command = https_command(method, self.base + path, token=self.token or "", body=body is not None)
        result = self.executor.run(command, check=False, timeout=120,
                                   stdin=json.dumps(body).encode() if body is not None else None)
        if not result.ok:
            raise CommandFailed(f"Rancher API {method} {path} failed (exit status {result.exit_status})",
                                details=result.tail())
        try:
            return json.loads(result.stdout or "{}")
        except ValueError as exc:
            raise CommandFailed(f"Rancher API {method} {path} did not return JSON", details=result.stdout[-2000:]) from exc

    def login(self, password: str) -> None:
        answer = self.call("POST", "/v3-public/localProviders/local?action=login",
                           {"username": "admin", "password": password, "responseType": "json"})
        if not answer.get("token"):
            raise CommandFailed("Rancher refused the bootstrap password", details=json.dumps(answer)[:2000])
        self.token = answer["token"]

    def register(self, cluster_name: str, *, timeout: float) -> tuple[str, str]:
        """Create (or find) the imported cluster: (its id, its registration manifest URL)."""
        self.call("PUT", "/v3/settings/server-url", {"name": "server-url", "value": self.base})
        found = self.call("GET", f"/v3/clusters?name={cluster_name}").get("data", [])
        cluster_id = found[0]["id"] if found else self.call("POST", "/v3/clusters", {"type": "cluster", "name": cluster_name})["id"]
        url = ""

        def ready() -> bool:
            nonlocal url
            tokens = self.call("GET", f"/v3/clusterregistrationtokens?clusterId={cluster_id}").get("data", [])
            if not tokens:
                self.call("POST", "/v3/clusterregistrationtokens", {"type": "clusterRegistrationToken", "clusterId": cluster_id})
                return False
            url = tokens[0].get("manifestUrl") or ""
            return bool(url)

        if not remote.wait_until(ready, timeout=timeout, interval=5):
            raise WaitTimeout(f"Rancher gave no registration manifest for cluster {cluster_name} within {timeout:.0f} s")
        return cluster_id, url

    def wait_active(self, cluster_id: str, *, timeout: float) -> dict:
        """The cluster as Rancher shows it once its agent connected; a timeout names the last state seen."""
        cluster: dict = {}

        def active() -> bool:
            cluster.update(self.call("GET", f"/v3/clusters/{cluster_id}"))
            return cluster.get("state") == "active"

        if not remote.wait_until(active, timeout=timeout, interval=5):
            raise WaitTimeout(
                f"the lab's cluster did not turn active in Rancher within {timeout:.0f} s "
                f"(state {cluster.get('state')!r}: {cluster.get('transitioningMessage') or 'no message'})",
                resolution="see `kubectl -n cattle-system logs deploy/cattle-cluster-agent` on the lab's cluster; "
                           "`labctl up` again resumes")
        return cluster


def import_cluster(lab: Lab, executors: dict[str, Executor], control: Control, password: str,
                   reporter: Reporter, *, timeout: float) -> None:
    """Register the lab's cluster in Rancher (create it through the API, apply its manifest on the cluster)
    and wait until Rancher shows it active: a return means the user sees a working cluster."""
    rancher_node = render.rancher_node(lab)
    assert rancher_node is not None
    host, ip = render.rancher_hostname(lab), str(rancher_node.ip)
    api = RancherAPI(lab, executors[rancher_node.name])
    api.login(password)
    cluster_id, url = api.register(render.cluster_name(lab), timeout=timeout)
    manifest = remote.sh(executors[rancher_node.name], https_command("GET", url), sudo=False, timeout=120).stdout
    reporter.phase(control.node, "rancher", "applying the registration manifest")
    # Nodes and pods must resolve the Rancher hostname; the lab's DNS may not know it.
    for node in lab.nodes:
        if node.name != rancher_node.name:
            remote.sh(executors[node.name], f"grep -q ' {host}$' /etc/hosts || echo '{ip} {host}' >> /etc/hosts")
    control.run(executors[control.node], "apply -f -", stdin=manifest.encode())
    patch = json.dumps({"spec": {"template": {"spec": {"hostAliases": [{"ip": ip, "hostnames": [host]}]}}}})
    control.run(executors[control.node], f"-n cattle-system patch deployment cattle-cluster-agent -p {shlex.quote(patch)}")
    reporter.phase(rancher_node.name, "rancher", f"waiting for cluster {render.cluster_name(lab)} to turn active")
    api.wait_active(cluster_id, timeout=timeout)


def install(lab: Lab, executors: dict[str, Executor], state_dir: Path, reporter: Reporter) -> str:
    """Install Rancher as the lab asks; return the bootstrap password."""
    node = render.rancher_node(lab)
    assert node is not None  # check_lab requires one when rancher.enabled
    executor = executors[node.name]
    password = bootstrap_password(state_dir, reporter)
    remote.sh(executor, "mkdir -p /etc/labctl")
    if lab.kubernetes.rancher.mode == "helm":
        install_helm_mode(lab, executor, password, reporter)
    else:
        install_docker_mode(lab, executor, password, reporter)
    wait_up(lab, executor, timeout=lab.kubernetes.ready_timeout)
    return password
