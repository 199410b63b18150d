"""Day-two verbs on a lab's cluster: kubeconfig, etcd snapshots, and tearing Kubernetes down."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from labctl.errors import InvalidInput, LabctlError
from labctl.kube import cluster, kubeadm, rancher, render, rke
from labctl.kube.remote import run_script, sh
from labctl.parallel import in_parallel
from labctl.lab import Lab
from labctl.progress import Reporter
from labctl.transport import Executor

SNAPSHOT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
KUBEADM_SNAPSHOT_DIR = "/var/lib/labctl/etcd-snapshots"
RKE_SNAPSHOT_DIR = "/opt/rke/etcd-snapshots"
RKE2_SNAPSHOT_DIR = "/var/lib/rancher/rke2/server/db/snapshots"
# What a kubeadm restore leaves beside the cluster: the data dir it replaced, and (if it failed
# midway) the stopped manifests and the half-restored dir. `reset --kubernetes` removes them.
KUBEADM_BEFORE_RESTORE = "/var/lib/etcd.before-restore"
KUBEADM_STOPPED_MANIFESTS = "/etc/kubernetes/manifests-stopped"
KUBEADM_RESTORE_PREFIX = "/var/lib/etcd-restore-"


def _require_cluster(lab: Lab) -> None:
    if lab.kubernetes.distro == "none":
        raise InvalidInput(f"lab {lab.name} has no Kubernetes (kubernetes.distro: none)",
                           resolution="set kubernetes.distro in the lab file and run `labctl up`")


def kubeconfig(lab: Lab, state_dir: Path) -> str:
    """The admin kubeconfig `labctl up` saved, server already rewritten to the node address."""
    _require_cluster(lab)
    path = state_dir / cluster.KUBECONFIG_NAME
    if not path.exists():
        raise LabctlError(f"no kubeconfig for lab {lab.name} yet", resolution=f"run `labctl up` for {lab.name} first")
    return path.read_text()


def merge_kubeconfig(text: str, context: str, target: Path) -> None:
    """Add the lab as cluster/user/context `context` to target, replacing only entries of that name."""
    lab_config = yaml.safe_load(text)
    ours = {
        "clusters": [{"name": context, "cluster": lab_config["clusters"][0]["cluster"]}],
        "users": [{"name": context, "user": lab_config["users"][0]["user"]}],
        "contexts": [{"name": context, "context": {"cluster": context, "user": context}}],
    }
    existing = yaml.safe_load(target.read_text()) if target.exists() else None
    merged = existing or {"apiVersion": "v1", "kind": "Config", "preferences": {}}
    for section, entries in ours.items():
        kept = [e for e in merged.get(section) or [] if e.get("name") != context]
        merged[section] = kept + entries
    merged.setdefault("current-context", context)
    if not merged["current-context"]:
        merged["current-context"] = context
    cluster.write_private(target, yaml.safe_dump(merged, sort_keys=False))


def _check_name(name: str) -> None:
    if not SNAPSHOT_NAME_RE.match(name):
        raise InvalidInput(f"snapshot name {name!r} is not usable",
                           resolution="use letters, digits, '.', '_' and '-', at most 63 characters")


def _etcd_master(lab: Lab, executors: dict[str, Executor]) -> Executor:
    return executors[render.masters(lab)[0].name]


def _crictl(lab: Lab) -> str:
    """crictl at the kubelet's runtime: unconfigured, it tries containerd's socket first, which with
    Docker is Docker's own containerd, without the CRI."""
    return f"crictl --runtime-endpoint {render.cri_socket(lab.kubernetes)}"


def _kubeadm_etcdctl(lab: Lab, args: str) -> str:
    """etcdctl inside the etcd static pod's container, which has the tool and the certificates mounted."""
    certs = ("--cacert /etc/kubernetes/pki/etcd/ca.crt --cert /etc/kubernetes/pki/etcd/server.crt "
             "--key /etc/kubernetes/pki/etcd/server.key")
    container = f"$({_crictl(lab)} ps --name etcd -q | head -n1)"
    return f"{_crictl(lab)} exec {container} etcdctl --endpoints https://127.0.0.1:2379 {certs} {args}"


def snapshot_save(lab: Lab, executors: dict[str, Executor], name: str) -> str:
    _require_cluster(lab)
    _check_name(name)
    distro = lab.kubernetes.distro
    if distro == "rke":
        return sh(executors[render.rancher_node(lab).name], rke.rke_command(lab, f"etcd snapshot-save --name {name}"),
                  sudo=False, timeout=1800).stdout
    if distro == "rke2":
        return sh(_etcd_master(lab, executors), f"rke2 etcd-snapshot save --name {name}", timeout=1800).stdout
    # /var/lib/etcd is the etcd pod's data hostPath, so a file written there lands on the node.
    executor = _etcd_master(lab, executors)
    sh(executor, f"mkdir -p {KUBEADM_SNAPSHOT_DIR}")
    output = sh(executor, _kubeadm_etcdctl(lab, f"snapshot save /var/lib/etcd/{name}.db"), timeout=1800).stdout
    sh(executor, f"mv /var/lib/etcd/{name}.db {KUBEADM_SNAPSHOT_DIR}/{name}.db")
    return output


def snapshot_list(lab: Lab, executors: dict[str, Executor]) -> str:
    _require_cluster(lab)
    distro = lab.kubernetes.distro
    if distro == "rke2":
        return sh(_etcd_master(lab, executors), "rke2 etcd-snapshot list").stdout
    directory = RKE_SNAPSHOT_DIR if distro == "rke" else KUBEADM_SNAPSHOT_DIR
    return sh(_etcd_master(lab, executors), f"mkdir -p {directory} && ls -l {directory}").stdout


def snapshot_restore(lab: Lab, executors: dict[str, Executor], name: str, reporter: Reporter) -> None:
    """Restore the named snapshot the way each distro documents it; the API is down meanwhile."""
    _require_cluster(lab)
    _check_name(name)
    distro = lab.kubernetes.distro
    masters = render.masters(lab)
    if distro == "rke":
        sh(executors[render.rancher_node(lab).name], rke.rke_command(lab, f"etcd snapshot-restore --name {name}"),
           sudo=False, timeout=3600)
        return
    if distro == "rke2":
        # https://docs.rke2.io/datastore/backup_restore#restoring-a-snapshot-to-existing-nodes
        first, others = executors[masters[0].name], [executors[m.name] for m in masters[1:]]
        for executor in (first, *others):
            sh(executor, "systemctl stop rke2-server")
        reporter.phase(masters[0].name, "etcd", f"cluster-reset from {name}")
        # A glob inside `--flag=PATH*` never expands (the word starts with the flag): resolve the file first.
        # `rke2 etcd-snapshot save --name N` writes N-<node>-<timestamp>; the newest one wins.
        sh(first, f"snapshot=$(ls -1t {RKE2_SNAPSHOT_DIR}/{name}-* 2>/dev/null | head -n1); "
                  f"if [ -z \"$snapshot\" ]; then echo 'no snapshot {name} in {RKE2_SNAPSHOT_DIR}' >&2; exit 1; fi; "
                  "rke2 server --cluster-reset --cluster-reset-restore-path=\"$snapshot\"", timeout=3600)
        sh(first, "systemctl start rke2-server", timeout=1800)
        for executor in others:
            sh(executor, "rm -rf /var/lib/rancher/rke2/server/db && systemctl start rke2-server", timeout=1800)
        return
    if len(masters) > 1:
        raise InvalidInput("restoring a kubeadm cluster with several masters is not automated",
                           resolution="follow https://kubernetes.io/docs/tasks/administer-cluster/configure-upgrade-etcd/#restoring-an-etcd-cluster")
    # https://kubernetes.io/docs/tasks/administer-cluster/configure-upgrade-etcd/#restoring-an-etcd-cluster:
    # stop the static pods, restore into a fresh data dir with etcdutl from the etcd image, swap dirs, restart.
    # The kubelet stops a pod some seconds after its manifest left, and a kubelet restart keeps running
    # containers: etcd must be gone before its data dir moves, or it keeps serving the old data.
    # The restored member keeps the manifest's name and peer URL (etcdutl's defaults are default/localhost).
    restored = f"{KUBEADM_RESTORE_PREFIX}{name}"
    executor = executors[masters[0].name]
    # The etcd image is where the runtime keeps it: Docker's store, or containerd's k8s.io namespace.
    run_image = ('docker run --rm -v /var/lib:/var/lib "$image"' if lab.kubernetes.runtime == "docker" else
                 'ctr -n k8s.io run --rm --mount type=bind,src=/var/lib,dst=/var/lib,options=rbind:rw "$image" '
                 'labctl-etcd-restore')
    run_script(executor, f"""set -euo pipefail
test -f {KUBEADM_SNAPSHOT_DIR}/{name}.db
manifest=/etc/kubernetes/manifests/etcd.yaml
image=$(awk '/image:.*etcd/ {{print $2; exit}}' "$manifest")
flag() {{ sed -n "s/^ *- --$1=//p" "$manifest" | head -n1; }}
member=$(flag name) peer_urls=$(flag initial-advertise-peer-urls)
mkdir -p {KUBEADM_STOPPED_MANIFESTS}
mv /etc/kubernetes/manifests/*.yaml {KUBEADM_STOPPED_MANIFESTS}/
running() {{ {_crictl(lab)} ps --name etcd -q; {_crictl(lab)} ps --name kube-apiserver -q; }}
for _ in $(seq 90); do [ -z "$(running)" ] && break; sleep 2; done
if [ -n "$(running)" ]; then echo 'etcd and kube-apiserver still run 180 s after their manifests left' >&2; exit 1; fi
rm -rf {restored}
{run_image} \\
  etcdutl snapshot restore {KUBEADM_SNAPSHOT_DIR}/{name}.db --data-dir {restored} \\
  --name "$member" --initial-cluster "$member=$peer_urls" --initial-advertise-peer-urls "$peer_urls"
rm -rf {KUBEADM_BEFORE_RESTORE}
mv /var/lib/etcd {KUBEADM_BEFORE_RESTORE}
mv {restored} /var/lib/etcd
mv {KUBEADM_STOPPED_MANIFESTS}/*.yaml /etc/kubernetes/manifests/
systemctl restart kubelet
""", timeout=3600)
    kubeadm.wait_endpoint(lab, executor, reporter, after="the restore")


def reset_kubernetes(lab: Lab, executors: dict[str, Executor], state_dir: Path, reporter: Reporter) -> None:
    """Tear Kubernetes (and Rancher) off the nodes, keeping the VMs."""
    _require_cluster(lab)
    kube = lab.kubernetes
    cluster_nodes = [n for n in lab.nodes if n.name in cluster.cluster_node_names(lab)]
    if kube.distro == "kubeadm":
        # kubeadm reset empties /var/lib/etcd only; an earlier restore's copies hold the old cluster's data.
        command = (f"if command -v kubeadm >/dev/null; then kubeadm reset -f --cri-socket {render.cri_socket(kube)}; fi; "
                   "rm -rf /etc/cni/net.d /etc/labctl/kubeadm*.yaml /etc/labctl/cni.yaml "
                   f"{KUBEADM_BEFORE_RESTORE} {KUBEADM_STOPPED_MANIFESTS} {KUBEADM_RESTORE_PREFIX}*")
        in_parallel(cluster_nodes, lambda n: sh(executors[n.name], command, timeout=900), "kubeadm reset")
        balancer = render.api_balancer(lab)
        if balancer is not None:
            sh(executors[balancer.name], kubeadm.REMOVE_BALANCER, timeout=900)
    elif kube.distro == "rke2":
        command = "if [ -x /usr/local/bin/rke2-uninstall.sh ]; then /usr/local/bin/rke2-uninstall.sh; fi"
        in_parallel(cluster_nodes, lambda n: sh(executors[n.name], command, timeout=900), "rke2 uninstall")
    else:
        sh(executors[render.rancher_node(lab).name],
           f"if [ -f {rke.workdir(lab)}/cluster.yml ]; then {rke.rke_command(lab, 'remove --force')}; fi",
           sudo=False, timeout=1800)
    if kube.rancher.enabled:
        node = render.rancher_node(lab)
        command = ("if [ -x /usr/local/bin/rke2-uninstall.sh ]; then /usr/local/bin/rke2-uninstall.sh; fi"
                   if kube.rancher.mode == "helm" else
                   f"docker rm -f rancher 2>/dev/null || true; rm -rf {rancher.DATA_DIR} {rancher.ENV_FILE}")
        sh(executors[node.name], command, timeout=900)
        (state_dir / rancher.PASSWORD_FILE).unlink(missing_ok=True)
    (state_dir / cluster.KUBECONFIG_NAME).unlink(missing_ok=True)
    reporter.info(f"Kubernetes removed from lab {lab.name}; the VMs are still running")


