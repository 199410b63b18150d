"""cri-dockerd double, run by labctl's cri-docker.service as `cri-dockerd --container-runtime-endpoint fd://`.

Like cri-dockerd it serves on the socket systemd hands over (socket activation: LISTEN_PID and
LISTEN_FDS, the first passed fd is 3), reports READY=1 to systemd (Type=notify), and serves only
while a Docker daemon answers on --docker-endpoint (default unix:///var/run/docker.sock): it exits
otherwise. Each CRI call is one
JSON line each way (in place of gRPC), answered from Docker's own /info, so the runtime name,
version and cgroup driver the kubelet double sees are the real Docker's.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
from typing import Any

from .common import die, notify_ready, parse_flags, record

TOOL = "cri-dockerd"
DEFAULT_DOCKER_ENDPOINT = "unix:///var/run/docker.sock"
SD_LISTEN_FDS_START = 3


class _DockerConnection(http.client.HTTPConnection):
    """HTTP to the Docker Engine API on its unix socket."""

    def __init__(self, endpoint: str) -> None:
        super().__init__("localhost", timeout=10)
        self.socket_path = endpoint.removeprefix("unix://")

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


def no_docker(endpoint: str) -> str:
    return f"Cannot connect to the Docker daemon at {endpoint}. Is the docker daemon running?"


def docker_info(endpoint: str) -> dict[str, Any]:
    connection = _DockerConnection(endpoint)
    try:
        connection.request("GET", "/info")
        response = connection.getresponse()
        if response.status != 200:
            raise OSError(f"docker answered {response.status}")
        return json.loads(response.read())
    except (http.client.HTTPException, ValueError) as exc:
        raise OSError(str(exc)) from exc
    finally:
        connection.close()


def activated_socket(endpoint: str | None) -> socket.socket:
    if endpoint != "fd://":
        die(TOOL, f'level=fatal msg="this cri-dockerd double serves only a systemd socket (fd://), not {endpoint}"')
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or int(os.environ.get("LISTEN_FDS") or 0) < 1:
        die(TOOL, 'level=fatal msg="failed to listen on fd://: no sockets passed by systemd (LISTEN_PID/LISTEN_FDS)"')
    return socket.socket(fileno=SD_LISTEN_FDS_START)


def answer(request: dict[str, Any], docker: str) -> dict[str, Any]:
    try:
        info = docker_info(docker)
    except OSError:
        return {"error": f"rpc error: code = Unknown desc = {no_docker(docker)}"}
    return {"method": request.get("method"), "runtimeName": "docker", "runtimeVersion": info.get("ServerVersion"),
            "runtimeApiVersion": "v1", "cgroupDriver": info.get("CgroupDriver")}


def serve(connection: socket.socket, docker: str) -> None:
    with connection:
        try:
            request = json.loads(connection.makefile().readline() or "{}")
        except ValueError:
            request = {}
        reply = answer(request, docker)
        record(TOOL, event="call", method=request.get("method"), ok="error" not in reply)
        connection.sendall(json.dumps(reply).encode() + b"\n")


def main(argv: list[str]) -> None:
    flags, _ = parse_flags(argv)
    listener = activated_socket(flags.get("container-runtime-endpoint"))
    docker = flags.get("docker-endpoint", DEFAULT_DOCKER_ENDPOINT)
    try:
        info = docker_info(docker)
    except OSError as exc:
        die(TOOL, f'level=fatal msg="Unable to connect to docker: {no_docker(docker)}" error="{exc}"')
    record(TOOL, event="serving", socket=str(listener.getsockname()), docker=info.get("ServerVersion"),
           cgroup_driver=info.get("CgroupDriver"))
    notify_ready()
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=serve, args=(connection, docker), daemon=True).start()
