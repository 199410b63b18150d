"""Provisioning: playbooks run over SSH on the lab's nodes."""
