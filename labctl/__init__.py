"""labctl: a reproducible Kubernetes lab on one Linux host."""

__version__ = "0.1.0"
