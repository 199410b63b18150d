"""Kubernetes bootstrap: kubeadm, RKE2, RKE, and Rancher."""
