"""etcdutl double, in the etcd image (tests/doubles/image.py): `etcdutl snapshot restore FILE --data-dir DIR`.

As etcdutl does, it restores only a whole snapshot (the one etcdctl wrote, checksum intact) into a
data dir that is missing or empty, and gives the new dir the membership its flags name (--name,
--initial-cluster, --initial-advertise-peer-urls; etcd's defaults without them), not the snapshot's.
"""

from __future__ import annotations

from pathlib import Path

from . import etcd
from .common import die, parse_flags, record

TOOL = "etcdutl"


def restore(snapshot: Path, flags: dict[str, str]) -> None:
    name = flags.get("name", "default")
    peer_url = flags.get("initial-advertise-peer-urls", "http://localhost:2380")
    members = etcd.initial_cluster(flags.get("initial-cluster", "default=http://localhost:2380"))
    data_dir = Path(flags.get("data-dir") or f"{name}.etcd")
    if members.get(name) != peer_url:
        die(TOOL, f'Error: couldn\'t find local name "{name}" in the initial cluster configuration')
    try:
        state = etcd.read_snapshot(snapshot)
    except OSError as exc:
        die(TOOL, f"Error: open {snapshot}: {exc.strerror.lower() if exc.strerror else exc}")
    except ValueError as exc:
        die(TOOL, f"Error: {exc}")
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        die(TOOL, f'Error: data-dir "{data_dir}" not empty or could not be read')
    etcd.restore(data_dir, state, members)
    record(TOOL, command="snapshot restore", snapshot=str(snapshot), data_dir=str(data_dir), members=members,
           nodes=sorted(state["nodes"]))
    print(f'{{"level":"info","msg":"restored snapshot","path":"{snapshot}","wal-dir":"{data_dir}/member/wal",'
          f'"data-dir":"{data_dir}","snap-dir":"{data_dir}/member/snap"}}')


def main(argv: list[str]) -> None:
    flags, words = parse_flags(argv)
    if words[:2] != ["snapshot", "restore"] or len(words) != 3:
        die(TOOL, f"this etcdutl double implements `snapshot restore FILE`, not `etcdutl {' '.join(argv)}`")
    restore(Path(words[2]), flags)
