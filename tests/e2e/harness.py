"""A network namespace with its own libvirtd, so real guests never reach a network outside it.

`LabNamespace` creates a namespace with only `lo` (no veth, no route out), then starts virtlogd
and libvirtd inside it. libvirt's system paths (/run/libvirt, /var/lib/libvirt, /etc/libvirt,
/var/cache/libvirt, /var/log/libvirt) are global to the filesystem, so the daemons also run in
a private mount namespace where those paths are bind mounts of the run's work directory. Any
libvirtd already on the host (or another run's) keeps its own sockets, guests and definitions;
clients reach ours through `qemu:///system?socket=...` (see `LabNamespace.uri`).

Every name and directory carries PREFIX and the owning process id, so the leftovers of a run
that was killed are found and removed without touching anything else.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Self

log = logging.getLogger(__name__)

PREFIX = "labctl-e2e-"
WORK_ROOT = Path("/var/tmp")
DEFAULT_CACHE = Path("/var/cache/labctl-e2e")
REQUIRED_PROGRAMS = ("ip", "virtlogd", "libvirtd", "virsh", "qemu-system-x86_64", "qemu-img", "dnsmasq")
# libvirt's per-host paths, each replaced by a directory of the run inside the daemons' mount namespace.
PRIVATE_PATHS = {
    "run": "/run/libvirt",
    "lib": "/var/lib/libvirt",
    "etc": "/etc/libvirt",
    "cache": "/var/cache/libvirt",
    "log": "/var/log/libvirt",
}
# Processes a run leaves behind when it is killed; only these are signalled during stale cleanup.
DAEMON_NAMES = ("libvirtd", "virtlogd", "dnsmasq", "qemu-system-x86", "qemu-system-x86_64")
_NAME_RE = re.compile(rf"^{re.escape(PREFIX)}(\d+)-[0-9a-f]+$")


class HarnessError(RuntimeError):
    """The host cannot run the end-to-end tests, or the namespace could not be set up."""


def owner_pid(name: str) -> int | None:
    """The process that created a namespace or work directory named by this harness."""
    match = _NAME_RE.match(name)
    return int(match.group(1)) if match else None


def has_default_route(ip_route_output: str) -> bool:
    return any(line.split()[:1] == ["default"] for line in ip_route_output.splitlines())


def missing_prerequisites() -> list[str]:
    """What this host lacks to run the e2e tests, as sentences for a failure message."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the e2e tests must run as root (network namespaces, libvirtd, bridges)")
    missing = [p for p in REQUIRED_PROGRAMS if not shutil.which(p, path=_system_path())]
    if missing:
        problems.append(
            "missing programs: " + ", ".join(missing)
            + " (install qemu-system-x86 qemu-utils libvirt-daemon-system libvirt-clients dnsmasq-base iproute2)"
        )
    return problems


def _system_path() -> str:
    return os.environ.get("PATH", "") + ":/usr/local/sbin:/usr/sbin:/sbin"


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting for its parent."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _host(argv: Sequence[str], *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PATH": _system_path()})
    if check and proc.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc


def namespaces() -> list[str]:
    out = _host(["ip", "netns", "list"]).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def namespace_pids(name: str) -> list[int]:
    proc = _host(["ip", "netns", "pids", name], check=False)
    return [int(p) for p in proc.stdout.split()] if proc.returncode == 0 else []


def process_name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _in_main_netns(pid: int) -> bool:
    try:
        return os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
    except OSError:
        return False


def _terminate(pids: Sequence[int], *, grace: float = 10.0) -> None:
    """SIGTERM, wait up to `grace` seconds, then SIGKILL whatever is left."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _pids_from_files(workdir: Path) -> list[int]:
    """Daemons recorded in a work directory: libvirtd, virtlogd, each network's dnsmasq, each guest's QEMU."""
    files = [workdir / "libvirtd.pid", workdir / "virtlogd.pid",
             *workdir.glob("run/network/*.pid"), *workdir.glob("run/qemu/*.pid")]
    pids = []
    for file in files:
        try:
            pids.append(int(file.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _stop_run(name: str) -> None:
    """Stop every process a run started and delete its namespace."""
    pids = namespace_pids(name) if name in namespaces() else []
    workdir = WORK_ROOT / name
    # A daemon outlives its namespace's name if that was deleted first; its pid file still names it.
    # Pid files may be stale and the pid reused, so only our daemons outside the main namespace count.
    pids += [p for p in _pids_from_files(workdir)
             if p not in pids and process_name(p) in DAEMON_NAMES and not _in_main_netns(p)]
    _terminate(pids)
    if name in namespaces():
        _host(["ip", "netns", "delete", name])


def _remove_run(name: str) -> None:
    _stop_run(name)
    shutil.rmtree(WORK_ROOT / name, ignore_errors=True)


def clean_stale() -> list[str]:
    """Remove namespaces and work directories of runs whose owning process is gone. Returns their names."""
    names = set(namespaces())
    if WORK_ROOT.is_dir():
        names |= {p.name for p in WORK_ROOT.iterdir() if p.is_dir()}
    stale = sorted(n for n in names if (pid := owner_pid(n)) is not None and not alive(pid))
    for name in stale:
        log.warning("removing leftovers of a killed e2e run: %s", name)
        _remove_run(name)
    return stale


class LabNamespace:
    """A network namespace with no route out, running its own virtlogd and libvirtd.

    Use as a context manager. `run()` executes a command inside the namespace; `uri` is the
    libvirt URI of the namespace's libvirtd. Leaving the context destroys every domain, network
    and storage pool, stops the daemons and whatever else runs in the namespace, and deletes the
    namespace and the work directory (kept when `keep_workdir`, e.g. to read guest console logs).
    """

    def __init__(self, *, keep_workdir: bool = False, start_timeout: float = 60.0, name: str | None = None):
        # A fixed name (the sandbox's) does not match PREFIX's pattern, so stale cleanup never takes it.
        self.name = name or f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self.workdir = WORK_ROOT / self.name
        self.uri = f"qemu:///system?socket={self.workdir / 'run' / 'libvirt-sock'}"
        self.keep_workdir = keep_workdir
        self.start_timeout = start_timeout
        self._entered = False

    # ---- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> LabNamespace:
        problems = missing_prerequisites()
        if problems:
            raise HarnessError("cannot run e2e tests on this host:\n  " + "\n  ".join(problems))
        clean_stale()
        self._entered = True
        try:
            self._make_workdir()
            _host(["ip", "netns", "add", self.name])
            self._check_isolated()
            self.run(["ip", "link", "set", "lo", "up"], check=True)
            self._start_daemons()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @classmethod
    def attach(cls, name: str) -> LabNamespace:
        """The namespace of that name started earlier (by another process) and still running."""
        ns = cls(name=name)
        if name not in namespaces() or not ns._libvirtd_answers():
            raise HarnessError(f"no running namespace {name} with a libvirtd")
        ns._entered = True
        return ns

    def close(self) -> None:
        if not self._entered:
            return
        self._entered = False
        try:
            if self.name in namespaces() and self._libvirtd_answers():
                self._destroy_libvirt_objects()
        except subprocess.TimeoutExpired:
            log.warning("libvirtd in %s hung during teardown; stopping it regardless", self.name)
        if self.keep_workdir:
            _stop_run(self.name)
            # Renamed out of PREFIX's pattern so stale cleanup of later runs leaves it alone.
            kept = self.workdir.with_name(f"{PREFIX}kept-{self.workdir.name.removeprefix(PREFIX)}")
            self.workdir.rename(kept)
            log.warning("kept e2e work directory %s", kept)
        else:
            _remove_run(self.name)

    def _make_workdir(self) -> None:
        # 0755 all the way: the QEMU user (libvirt-qemu) must reach guest disks below it.
        self.workdir.mkdir(mode=0o755)
        self.workdir.chmod(0o755)
        for sub in PRIVATE_PATHS:
            (self.workdir / sub).mkdir(mode=0o755)
        etc = self.workdir / "etc"
        # Daemon settings only: the host's persistent domains and networks must not appear here.
        for conf in Path("/etc/libvirt").glob("*.conf"):
            shutil.copy2(conf, etc / conf.name)
        if Path("/etc/libvirt/nwfilter").is_dir():
            shutil.copytree("/etc/libvirt/nwfilter", etc / "nwfilter")
        for daemon in ("libvirtd", "virtlogd"):
            with open(etc / f"{daemon}.conf", "a") as conf:
                conf.write(f'\nlog_outputs = "3:file:/var/log/libvirt/{daemon}.log"\n')

    def _check_isolated(self) -> None:
        routes = "".join(self.run(["ip", family, "route", "show", "table", "all"], check=True).stdout
                         for family in ("-4", "-6"))
        if has_default_route(routes):
            raise HarnessError(f"namespace {self.name} has a default route; refusing to start guests:\n{routes}")
        links = self.run(["ip", "-o", "link", "show"], check=True).stdout
        names = [line.split(":")[1].strip().split("@")[0] for line in links.splitlines() if line.strip()]
        if names != ["lo"]:
            raise HarnessError(f"namespace {self.name} has interfaces besides lo: {names}")

    def _start_daemons(self) -> None:
        # mkdir: on a host without libvirt's packages /run/libvirt may not exist to mount over.
        mounts = " && ".join(
            f'mkdir -p {target} && mount --bind "$1/{sub}" {target}' for sub, target in PRIVATE_PATHS.items()
        )
        # `ip netns exec` gives the shell a mount namespace of its own; the daemons keep it after the shell exits.
        script = f'{mounts} && virtlogd -d -p "$1/virtlogd.pid" && libvirtd -d -p "$1/libvirtd.pid"'
        self.run(["sh", "-ec", script, "sh", str(self.workdir)], check=True, timeout=60)
        deadline = time.monotonic() + self.start_timeout
        while not self._libvirtd_answers():
            if time.monotonic() > deadline:
                raise HarnessError(
                    f"libvirtd in namespace {self.name} did not answer within {self.start_timeout:.0f} s\n"
                    + self.daemon_log_tail()
                )
            time.sleep(0.5)

    def _libvirtd_answers(self) -> bool:
        return self.virsh("version", timeout=30).returncode == 0

    def _destroy_libvirt_objects(self) -> None:
        # Networks last: their dnsmasq would otherwise outlive libvirtd.
        for name in self._virsh_names("list", "--all", "--name"):
            self.virsh("destroy", name)
            self.virsh("undefine", name, "--nvram")
        for name in self._virsh_names("pool-list", "--all", "--name"):
            self.virsh("pool-destroy", name)
            self.virsh("pool-undefine", name)
        for name in self._virsh_names("net-list", "--all", "--name"):
            self.virsh("net-destroy", name)
            self.virsh("net-undefine", name)

    def _virsh_names(self, *args: str) -> list[str]:
        return self.virsh(*args).stdout.split()

    # ---- running commands ------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands in the namespace: libvirt clients default to its libvirtd."""
        return {"LIBVIRT_DEFAULT_URI": self.uri, "PATH": _system_path()}

    def command(self, argv: Sequence[str | os.PathLike[str]]) -> list[str]:
        """argv prefixed to run inside the namespace; `ip netns exec` execs it, so the pid is argv's."""
        return ["ip", "netns", "exec", self.name, *(os.fspath(a) for a in argv)]

    def full_env(self, env: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(env or {})}

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float | None = 600,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the namespace with stdout and stderr captured; log both when it fails."""
        args = [os.fspath(a) for a in argv]
        try:
            proc = subprocess.run(self.command(args), env=self.full_env(env), input=input,
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            log.error("timed out after %s s in %s: %s\nstdout:\n%s\nstderr:\n%s", timeout, self.name,
                      shlex.join(args), _text(exc.stdout), _text(exc.stderr))
            raise
        if proc.returncode != 0:
            log.warning("exit %d in %s: %s\nstdout:\n%s\nstderr:\n%s", proc.returncode, self.name,
                        shlex.join(args), proc.stdout, proc.stderr)
            if check:
                raise HarnessError(f"{shlex.join(args)} exited {proc.returncode} in {self.name}:\n{proc.stderr}")
        return proc

    def virsh(self, *args: str, timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.run(["virsh", "-q", "-c", self.uri, *args], timeout=timeout, check=check)

    def pids(self) -> list[int]:
        """Processes running inside the namespace."""
        return namespace_pids(self.name)

    def daemon_log_tail(self, lines: int = 40) -> str:
        parts = []
        for log_file in sorted((self.workdir / "log").glob("*.log")):
            text = log_file.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {log_file.name}\n" + "\n".join(text))
        return "\n".join(parts)


class PrivateFirewalld:
    """A firewalld inside a LabNamespace, on a D-Bus system bus of its own.

    Its rules live in the namespace's netfilter, its configuration is a copy of the host's with
    `default_zone` as the default, and the bus socket is in the work directory, so neither touches
    the host's firewall or bus. Clients reach it through `env` (libdbus honours
    DBUS_SYSTEM_BUS_ADDRESS); libvirtd does not get it, so libvirt leaves the lab bridge in no zone
    and the default zone applies, as on a host where firewalld started after libvirtd.
    """

    PROGRAMS = ("dbus-daemon", "firewalld", "firewall-cmd")

    def __init__(self, ns: LabNamespace, *, default_zone: str, start_timeout: float = 60.0):
        self.ns = ns
        self.default_zone = default_zone
        self.start_timeout = start_timeout
        self.dir = ns.workdir / "firewalld"
        self.bus_socket = self.dir / "system_bus_socket"
        self._bus_pid: int | None = None
        self._firewalld: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={self.bus_socket}"}

    def __enter__(self) -> Self:
        missing = [p for p in self.PROGRAMS if not shutil.which(p, path=_system_path())]
        if missing:
            raise HarnessError(f"missing programs: {', '.join(missing)} (install dbus firewalld)")
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _start(self) -> None:
        self.dir.mkdir()
        config = self.dir / "etc"
        shutil.copytree("/etc/firewalld", config)
        conf = config / "firewalld.conf"
        conf.write_text(re.sub(r"(?m)^DefaultZone=.*$", "", conf.read_text()) + f"DefaultZone={self.default_zone}\n")
        bus_conf = Path("/usr/share/dbus-1/system.conf").read_text()
        # No pid file or user switch (both global); includedir is relative to the config file's directory.
        bus_conf = re.sub(r"<listen>.*?</listen>", f"<listen>unix:path={self.bus_socket}</listen>", bus_conf)
        bus_conf = re.sub(r"<(pidfile|user)>.*?</\1>", "", bus_conf)
        bus_conf = bus_conf.replace("<includedir>system.d</includedir>",
                                    "<includedir>/usr/share/dbus-1/system.d</includedir>")
        (self.dir / "system.conf").write_text(bus_conf)
        bus = self.ns.run(["dbus-daemon", f"--config-file={self.dir / 'system.conf'}", "--fork", "--print-pid"],
                          check=True, timeout=30)
        self._bus_pid = int(bus.stdout.split()[0])
        log_file = self.dir / "firewalld.log"
        # --nopid: the pid file is global; `ip netns exec` execs firewalld, so the Popen pid is firewalld's.
        self._firewalld = firewalld = subprocess.Popen(
            self.ns.command(["firewalld", "--nofork", "--nopid", "--system-config", config,
                             "--log-target", "file", "--log-file", log_file]),
            env=self.ns.full_env(self.env), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout
        while self.cmd("--state").returncode != 0:
            if firewalld.poll() is not None or time.monotonic() > deadline:
                tail = log_file.read_text(errors="replace")[-3000:] if log_file.exists() else ""
                raise HarnessError(f"firewalld in namespace {self.ns.name} did not start:\n{tail}")
            time.sleep(0.3)

    def cmd(self, *args: str) -> subprocess.CompletedProcess[str]:
        """firewall-cmd with args, against this firewalld."""
        return self.ns.run(["firewall-cmd", *args], env=self.env, timeout=60)

    def close(self) -> None:
        # firewalld first: it cleans up its rules on exit and needs the bus to do so quietly.
        if self._firewalld is not None:
            _terminate([self._firewalld.pid])
            self._firewalld.wait()
            self._firewalld = None
        if self._bus_pid is not None:
            _terminate([self._bus_pid])
            self._bus_pid = None


def persistent_cache() -> Path:
    """Where images and package repositories persist between runs: LABCTL_E2E_CACHE or DEFAULT_CACHE."""
    return Path(os.environ.get("LABCTL_E2E_CACHE") or DEFAULT_CACHE)


class Labctl:
    """Runs the installed `labctl` console script inside a namespace against its libvirtd.

    LABCTL_HOME is a 0755 directory in the namespace's work dir (the QEMU user must reach guest
    disks), and its cache is a link to `persistent_cache()` so images are built once per machine.
    """

    def __init__(self, ns: LabNamespace, script: Path):
        self.ns = ns
        self.script = script
        self.home = ns.workdir / "home"
        self.home.mkdir(mode=0o755, exist_ok=True)
        cache = persistent_cache()
        cache.mkdir(mode=0o755, parents=True, exist_ok=True)
        if not (self.home / "cache").is_symlink():
            (self.home / "cache").symlink_to(cache, target_is_directory=True)

    @property
    def env(self) -> dict[str, str]:
        return {"LABCTL_HOME": str(self.home)}

    def argv(self, *args: str) -> list[str]:
        return [str(self.script), "--connect", self.ns.uri, *args]

    def __call__(self, *args: str, timeout: float | None = 3600, env: Mapping[str, str] | None = None,
                 check: bool = False) -> subprocess.CompletedProcess[str]:
        return self.ns.run(self.argv(*args), timeout=timeout, check=check, env={**self.env, **(env or {})})


def _text(data: str | bytes | None) -> str:
    if isinstance(data, bytes):
        return data.decode(errors="replace")
    return data or ""
