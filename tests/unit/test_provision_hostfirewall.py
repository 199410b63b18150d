"""Host firewalld handling against a fake firewall-cmd that keeps interface zones."""

from __future__ import annotations

import subprocess

import pytest

from labctl import hostfirewall
from labctl.progress import QuietReporter


class FakeFirewalld:
    def __init__(self, running=True, zones=None):
        self.running = running
        self.zones: dict[str, str] = dict(zones or {})
        self.calls: list[list[str]] = []

    def run(self, argv, *, check=True, capture=False, **kwargs):
        assert argv[0] == "firewall-cmd"
        self.calls.append(argv[1:])
        args = dict(a.lstrip("-").split("=", 1) if "=" in a else (a.lstrip("-"), "") for a in argv[1:])
        if "state" in args:
            return self._done(0 if self.running else 252, "running" if self.running else "not running")
        if "get-zone-of-interface" in args:
            zone = self.zones.get(args["get-zone-of-interface"])
            return self._done(0 if zone else 2, zone or "no zone")
        if "change-interface" in args:
            self.zones[args["change-interface"]] = args["zone"]
            return self._done(0, "success")
        if "remove-interface" in args:
            self.zones.pop(args["remove-interface"], None)
            return self._done(0, "success")
        raise AssertionError(f"unexpected firewall-cmd call {argv}")

    @staticmethod
    def _done(code, out):
        return subprocess.CompletedProcess([], code, out.encode() + b"\n", b"")

    def changes(self):
        return [c for c in self.calls if any(a.startswith(("--change", "--remove")) for a in c)]


@pytest.fixture
def firewalld(monkeypatch):
    fake = FakeFirewalld(zones={"lcbr-1234": "libvirt"})
    monkeypatch.setattr(hostfirewall.runner, "run", fake.run)
    monkeypatch.setattr(hostfirewall.shutil, "which", lambda name: f"/usr/bin/{name}")
    return fake


def test_bridge_moves_to_trusted_and_back_to_where_it_was(firewalld, tmp_path):
    reporter = QuietReporter()
    change = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    assert change == hostfirewall.ZoneChange("lcbr-1234", "trusted", "libvirt", True)
    assert firewalld.zones["lcbr-1234"] == "trusted"
    assert hostfirewall.recorded_change(tmp_path) == change
    hostfirewall.undo(hostfirewall.recorded_change(tmp_path), reporter=reporter)
    assert firewalld.zones["lcbr-1234"] == "libvirt"


def test_second_up_changes_nothing_and_down_still_undoes_the_first(firewalld, tmp_path):
    reporter = QuietReporter()
    first = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    calls = len(firewalld.changes())
    again = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    assert len(firewalld.changes()) == calls
    assert again == first
    hostfirewall.undo(again, reporter=reporter)
    assert firewalld.zones["lcbr-1234"] == "libvirt"


def test_after_a_firewalld_reload_the_original_zone_is_kept(firewalld, tmp_path):
    reporter = QuietReporter()
    hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    firewalld.zones["lcbr-1234"] = "libvirt"  # a reload dropped the runtime change
    change = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    assert change.previous_zone == "libvirt" and firewalld.zones["lcbr-1234"] == "trusted"


def test_bridge_in_no_zone_is_removed_again(firewalld, tmp_path):
    firewalld.zones.clear()
    change = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=QuietReporter())
    assert change.previous_zone is None
    hostfirewall.undo(change, reporter=QuietReporter())
    assert "lcbr-1234" not in firewalld.zones


def test_already_trusted_bridge_is_not_touched_on_down(firewalld, tmp_path):
    firewalld.zones["lcbr-1234"] = "trusted"
    change = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=QuietReporter())
    assert change.changed is False
    hostfirewall.undo(change, reporter=QuietReporter())
    assert firewalld.zones["lcbr-1234"] == "trusted" and firewalld.changes() == []


def test_a_bridge_moved_by_someone_else_is_left_alone(firewalld, tmp_path):
    reporter = QuietReporter()
    change = hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter)
    firewalld.zones["lcbr-1234"] = "internal"
    hostfirewall.undo(change, reporter=reporter)
    assert firewalld.zones["lcbr-1234"] == "internal"
    assert any(kind == "warn" and "internal" in text for _, kind, text in reporter.events)


def test_without_firewalld_it_says_so_and_changes_nothing(monkeypatch, tmp_path):
    fake = FakeFirewalld(running=False)
    monkeypatch.setattr(hostfirewall.runner, "run", fake.run)
    monkeypatch.setattr(hostfirewall.shutil, "which", lambda name: f"/usr/bin/{name}")
    reporter = QuietReporter()
    assert hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=reporter) is None
    assert [e for e in reporter.events if e[1] == "info"] == [
        ("", "info", "firewalld is not running on this host: the lab bridge needs no firewall zone")]
    assert fake.changes() == [] and hostfirewall.recorded_change(tmp_path) is None


def test_without_firewall_cmd_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(hostfirewall.shutil, "which", lambda name: None)
    assert hostfirewall.allow_bridge("lcbr-1234", tmp_path, reporter=QuietReporter()) is None
