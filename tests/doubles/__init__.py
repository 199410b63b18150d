"""Test doubles of kubeadm, kubelet, kubectl, crictl, rke, rke2, helm and Rancher, for end-to-end tests on real guests.

They are never shipped: `build.py` packs them into single-file Python programs (zipapps) that a
test puts into an air-gapped artifacts directory in place of the real binaries. On the guests
they check their arguments and the files handed to them the way the real tools do, and talk to
each other through a small API server double (HTTP, not TLS) that the kubelet double runs as the
control plane's static pod, so `kubectl get nodes` lists exactly the nodes whose kubelet joined.
"""
