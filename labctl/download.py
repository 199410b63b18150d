"""HTTP downloads that resume, and the checksums publishers put next to their files."""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from labctl.errors import CommandFailed

Progress = Callable[[int, "int | None"], None]
_CHUNK = 1 << 20


def fetch(url: str) -> bytes:
    """A small file (a checksum list, a chart index) read into memory."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise CommandFailed(f"cannot download {url}: {exc}", resolution="check the host's network and retry") from exc


def stream(url: str, part: Path, progress: Progress | None = None) -> None:
    """Stream url into part, continuing from part's current length if the server allows."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as exc:
        if exc.code != 416 or not have:  # 416: the partial file is already complete
            raise CommandFailed(f"cannot download {url}: HTTP {exc.code} {exc.reason}") from exc
        return
    except (urllib.error.URLError, OSError) as exc:
        raise CommandFailed(f"cannot download {url}: {exc}", resolution="check the host's network and retry") from exc
    with response:
        resumed = response.status == 206
        done = have if resumed else 0
        length = response.headers.get("Content-Length")
        total = done + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as out:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def listed_checksum(text: str, filename: str) -> str | None:
    """The hash a `HASH  NAME` / `HASH *NAME` checksum list gives for filename, if it lists it."""
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2 and fields[1].lstrip("*") == filename:
            return fields[0].lower()
    return None
