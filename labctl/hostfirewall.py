"""The host's firewalld and the lab's bridge.

A host whose firewalld keeps the lab bridge in a restrictive zone drops the guests' DHCP and DNS
requests, so the guests never get an address. When firewalld runs, labctl moves the bridge into
a zone that lets that traffic through (trusted by default), records exactly what it changed in
the lab's state directory, and puts the bridge back on `labctl down`. The change is made to the
runtime configuration only, through firewall-cmd; `labctl up` makes it again after a reload.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from labctl import runner
from labctl.errors import CommandFailed
from labctl.progress import Reporter

RECORD = "host-firewall.json"
FIREWALL_CMD = "firewall-cmd"
_NO_ZONE = "no zone"


@dataclass(frozen=True)
class ZoneChange:
    """What labctl did to the bridge's zone; `changed` is false when it was already right."""

    bridge: str
    zone: str
    previous_zone: str | None
    changed: bool


def firewalld_running() -> bool:
    if shutil.which(FIREWALL_CMD) is None:
        return False
    return _firewall_cmd("--state", check=False).returncode == 0


def zone_of(bridge: str) -> str | None:
    proc = _firewall_cmd(f"--get-zone-of-interface={bridge}", check=False)
    zone = proc.stdout.decode().strip()
    return zone if proc.returncode == 0 and zone and zone != _NO_ZONE else None


def allow_bridge(bridge: str, state_dir: Path, *, reporter: Reporter, zone: str = "trusted") -> ZoneChange | None:
    """Put bridge into zone if firewalld runs; idempotent. Returns the record, or None without firewalld.

    Call it after the lab network has started: libvirt assigns its own zone when it creates the bridge.
    """
    if not firewalld_running():
        reporter.info("firewalld is not running on this host: the lab bridge needs no firewall zone")
        return None
    earlier = recorded_change(state_dir)
    current = zone_of(bridge)
    if current == zone:
        change = earlier if earlier and earlier.bridge == bridge else ZoneChange(bridge, zone, current, False)
    else:
        _firewall_cmd(f"--zone={zone}", f"--change-interface={bridge}")
        reporter.info(f"host firewalld: bridge {bridge} moved from zone {current or '(none)'} to {zone}")
        # After a firewalld reload the bridge is back in its old zone; the first record still tells where.
        previous = earlier.previous_zone if earlier and earlier.bridge == bridge and earlier.changed else current
        change = ZoneChange(bridge, zone, previous, True)
    _save(state_dir, change)
    return change


def undo(change: ZoneChange | None, *, reporter: Reporter) -> None:
    """Reverse exactly what allow_bridge changed; leave alone a bridge someone else has moved since."""
    if change is None or not change.changed or not firewalld_running():
        return
    current = zone_of(change.bridge)
    if current != change.zone:
        reporter.warn(f"host firewalld: bridge {change.bridge} is in zone {current or '(none)'}, not {change.zone}; left as is")
        return
    if change.previous_zone:
        _firewall_cmd(f"--zone={change.previous_zone}", f"--change-interface={change.bridge}")
    else:
        _firewall_cmd(f"--zone={change.zone}", f"--remove-interface={change.bridge}")
    reporter.info(f"host firewalld: bridge {change.bridge} back in zone {change.previous_zone or '(none)'}")


def recorded_change(state_dir: Path) -> ZoneChange | None:
    try:
        data = json.loads((state_dir / RECORD).read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise CommandFailed(f"{state_dir / RECORD} is not valid JSON",
                            resolution="undo the host firewalld change by hand, then delete the file") from exc
    return ZoneChange(**data)


def forget(state_dir: Path) -> None:
    """Drop the record once the change is undone."""
    (state_dir / RECORD).unlink(missing_ok=True)


def _save(state_dir: Path, change: ZoneChange) -> None:
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = state_dir / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(asdict(change), indent=2) + "\n")
    tmp.replace(state_dir / RECORD)


def _firewall_cmd(*args: str, check: bool = True):
    return runner.run([FIREWALL_CMD, *args], check=check, capture=True)
