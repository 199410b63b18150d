"""Try labctl on a host without a system libvirtd, or where guests must not reach any network.

The sandbox is a network namespace with no route out and its own libvirtd (the same one the
end-to-end tests use). Images and package repositories are built on the host, where apt can
reach the Debian archive; everything that talks to guests runs inside the namespace.

    python scripts/sandbox.py up [LAB]      start the sandbox if needed, build the image, labctl up LAB
    python scripts/sandbox.py run -- ARGS   run `labctl ARGS` in the sandbox (e.g. status default)
    python scripts/sandbox.py shell         a shell inside the sandbox, with labctl configured
    python scripts/sandbox.py destroy       tear down every lab, the libvirtd and the namespace
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.e2e.harness import HarnessError, Labctl, LabNamespace, namespaces  # noqa: E402

NAME = "labctl-sandbox"
LABCTL = Path(sys.executable).parent / "labctl"


def _namespace(create: bool) -> LabNamespace:
    if NAME in namespaces():
        return LabNamespace.attach(NAME)
    if not create:
        raise HarnessError(f"no sandbox is running; start one with `{sys.argv[0]} up`")
    return LabNamespace(name=NAME).__enter__()


def _host_build(labctl: Labctl, lab: str) -> None:
    """The base image and package repositories are built on the host: apt there reaches the archive."""
    env = {**os.environ, **labctl.env}
    subprocess.run([LABCTL, "image", "build", "debian-12"], check=True, env=env)
    subprocess.run([LABCTL, "repo-build", lab], check=True, env=env)


def up(lab: str) -> int:
    ns = _namespace(create=True)
    labctl = Labctl(ns, LABCTL)
    _host_build(labctl, lab)
    return _interactive(ns, labctl.argv("up", lab), labctl.env)


def run(args: list[str]) -> int:
    ns = _namespace(create=False)
    labctl = Labctl(ns, LABCTL)
    return _interactive(ns, labctl.argv(*args), labctl.env)


def shell() -> int:
    ns = _namespace(create=False)
    labctl = Labctl(ns, LABCTL)
    env = {**labctl.env, "LIBVIRT_DEFAULT_URI": ns.uri, "PATH": f"{LABCTL.parent}:{os.environ['PATH']}"}
    return _interactive(ns, [os.environ.get("SHELL", "/bin/bash")], env)


def destroy() -> int:
    _namespace(create=False).close()
    print(f"sandbox {NAME} removed")
    return 0


def _interactive(ns: LabNamespace, argv: list[str], env: dict[str, str]) -> int:
    """Run in the namespace with the terminal attached, so progress shows live."""
    return subprocess.run(["ip", "netns", "exec", ns.name, *map(str, argv)],
                          env={**os.environ, **ns.env, **env}).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    sub.add_parser("up").add_argument("lab", nargs="?", default="default")
    sub.add_parser("run").add_argument("args", nargs=argparse.REMAINDER)
    sub.add_parser("shell")
    sub.add_parser("destroy")
    options = parser.parse_args()
    try:
        if options.verb == "up":
            return up(options.lab)
        if options.verb == "run":
            return run(options.args[1:] if options.args[:1] == ["--"] else options.args)
        return shell() if options.verb == "shell" else destroy()
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
