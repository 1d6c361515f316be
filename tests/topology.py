"""Replicated Redis on loopback: a primary, replicas and three sentinels (issue 13).

Sentinels are ``redis-server <conf> --sentinel`` (Debian's redis-server package has no
``redis-sentinel`` binary unless redis-sentinel is installed; this is the same code).
Every port comes from ``free_port()``. Close the topology to stop every process it started.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from .support import RedisServer, free_port, wait_for

MASTER_NAME = "dkmaster"


class Sentinel:
    """One sentinel process watching ``MASTER_NAME``."""

    def __init__(self, primary_port: int, *, down_after_ms: int, failover_timeout_ms: int) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (the README's test command installs it)")
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dedupkit-sentinel-")
        conf = Path(self.dir, "sentinel.conf")  # sentinel rewrites it: its own, writable copy
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.dir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} {down_after_ms}\n"
            f"sentinel failover-timeout {MASTER_NAME} {failover_timeout_ms}\n"
            f"sentinel parallel-syncs {MASTER_NAME} 1\n")
        self.proc = subprocess.Popen([binary, str(conf), "--sentinel"], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _answers(client), 10, what=f"sentinel on port {self.port}")
        finally:
            client.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


def replicas_online(primary: redis.Redis) -> int:
    """How many replicas have finished their sync and stream from ``primary``."""
    info = primary.info("replication")
    return sum(1 for k, v in info.items()
               if k.startswith("slave") and isinstance(v, dict) and v.get("state") == "online")


class SentinelTopology:
    """A primary, ``replicas`` replicas and three sentinels (quorum 2), all on loopback."""

    def __init__(self, *, replicas: int = 1, down_after_ms: int = 1000, failover_timeout_ms: int = 5000,
                 proxied: bool = False) -> None:
        self.primary = RedisServer("--repl-diskless-sync-delay", "0")
        # proxied: the primary is reached through a StallingProxy (see stall_replication()).
        self.proxies = [StallingProxy(self.primary.port)] if proxied else []
        self.primary_address = self.proxies[0].port if proxied else self.primary.port
        self.replicas = [RedisServer("--replicaof", "127.0.0.1", str(self.primary_address)) for _ in range(replicas)]
        self.sentinels: list[Sentinel] = []
        try:
            primary = redis.Redis(port=self.primary.port)
            wait_for(lambda: replicas_online(primary) == replicas, 20, what="the replicas to sync")
            primary.close()
            self.sentinels = [Sentinel(self.primary_address, down_after_ms=down_after_ms,
                                       failover_timeout_ms=failover_timeout_ms) for _ in range(3)]
            wait_for(lambda: self._sentinels_agree(replicas), 20, what="the sentinels to see every node")
        except BaseException:
            self.close()
            raise

    @property
    def instances(self) -> list[tuple[str, int]]:
        return [("127.0.0.1", s.port) for s in self.sentinels]

    def settings(self, **extra: Any) -> dict[str, Any]:
        """RQ's ``SENTINEL`` settings dict for this topology."""
        return {"INSTANCES": self.instances, "MASTER_NAME": MASTER_NAME, **extra}

    def settings_module(self, directory: Path, name: str = "dk_sentinel_settings", **extra: Any) -> str:
        """Write an RQ settings module (``rq worker -c NAME``) into ``directory``; returns NAME."""
        Path(directory, f"{name}.py").write_text(f"SENTINEL = {self.settings(**extra)!r}\n")
        return name

    def master_port(self) -> int | None:
        """The primary the sentinels name now (None when none answers)."""
        for s in self.sentinels:
            try:
                with redis.Redis(port=s.port, socket_timeout=1) as client:
                    addr = client.execute_command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)
                    if addr:
                        return int(addr[1])
            except redis.exceptions.RedisError:
                continue
        return None

    def _sentinels_agree(self, replicas: int) -> bool:
        for s in self.sentinels:
            try:
                with redis.Redis(port=s.port, socket_timeout=1) as client:
                    master = client.execute_command("SENTINEL", "master", MASTER_NAME)
                    info = dict(zip(master[::2], master[1::2], strict=True)) if isinstance(master, list) else master
                    known = {k.decode() if isinstance(k, bytes) else k: v for k, v in info.items()}
                    if int(known["num-slaves"]) != replicas or int(known["num-other-sentinels"]) != 2:
                        return False
            except redis.exceptions.RedisError:
                return False
        return True

    def kill_primary(self) -> int:
        """SIGKILL the current primary (a host dying); returns its port."""
        port = self.master_port()
        if port == self.primary_address:
            self.primary.stop(signal.SIGKILL)
            return port
        for server in self.replicas:
            if server.port == port:
                server.stop(signal.SIGKILL)
                return port
        raise AssertionError(f"no server of this topology is the primary (sentinels say {port})")

    def cut_proxies(self) -> None:
        """Break the proxied links, losing what they held back."""
        for proxy in self.proxies:
            proxy.close()

    def stall_replication(self) -> None:
        """Hold back the primary's stream to every proxied replica (see StallingProxy)."""
        for proxy in self.proxies:
            proxy.stalled.set()

    def server(self, port: int) -> RedisServer:
        return next(s for s in (self.primary, *self.replicas) if s.port == port)

    def close(self) -> None:
        for s in self.sentinels:
            s.close()
        for server in (self.primary, *self.replicas):
            server.close()
        for proxy in self.proxies:
            proxy.close()


class ClusterTopology:
    """A Redis Cluster of three primaries (no replicas) on loopback, made with
    ``redis-cli --cluster create``."""

    def __init__(self) -> None:
        cli = shutil.which("redis-cli")
        if cli is None:
            raise FileNotFoundError("redis-cli is not installed (scripts/ensure-system-deps.sh installs redis-tools)")
        self.cli = cli
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(3):
                # The bus port defaults to port + 10000, past 65535 for many free ports: pick it too.
                self.nodes.append(RedisServer("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                                              "--cluster-node-timeout", "5000", "--cluster-port", str(free_port())))
            subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
                            "--cluster-replicas", "0", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            wait_for(self._ok, 30, what="the cluster to agree (cluster_state:ok on every node)")
        except BaseException:
            self.close()
            raise

    def _ok(self) -> bool:
        for n in self.nodes:
            with redis.Redis(port=n.port, socket_timeout=1) as c:
                if b"cluster_state:ok" not in c.execute_command("CLUSTER", "INFO"):
                    return False
        return True

    @property
    def ports(self) -> list[int]:
        return [n.port for n in self.nodes]

    def client(self, **kwargs: Any) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port, **kwargs)

    def owner(self, slot: int) -> int:
        """The port of the primary that serves ``slot`` now."""
        with redis.Redis(port=self.nodes[0].port) as c:
            for start, end, primary, *_ in c.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    return int(primary[1])
        raise AssertionError(f"no node serves slot {slot}")

    def node_id(self, port: int) -> str:
        with redis.Redis(port=port, decode_responses=True) as c:
            return str(c.execute_command("CLUSTER", "MYID"))

    def migrate_slot(self, slot: int, to_port: int, *, batch: int = 10, pause: float = 0.0) -> int:
        """Move one slot with its keys the way ``redis-cli --cluster reshard`` does (SETSLOT
        IMPORTING/MIGRATING, MIGRATE in batches, SETSLOT NODE everywhere), while clients go
        on; ``pause`` seconds between batches widens the window. Returns the keys moved."""
        source = self.owner(slot)
        src_id, dst_id = self.node_id(source), self.node_id(to_port)
        moved = 0
        with redis.Redis(port=source) as src, redis.Redis(port=to_port) as dst:
            dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
            src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
            while keys := src.execute_command("CLUSTER", "GETKEYSINSLOT", slot, batch):
                src.execute_command("MIGRATE", "127.0.0.1", to_port, "", 0, 5000, "KEYS", *keys)
                moved += len(keys)
                time.sleep(pause)
            for port in (to_port, source, *(p for p in self.ports if p not in (to_port, source))):
                with redis.Redis(port=port) as node:
                    node.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        return moved

    def close(self) -> None:
        for n in self.nodes:
            n.close()


class StallingProxy:
    """A TCP relay to ``port``. Everyone (sentinels, clients, replicas) reaches the primary
    through it, so Sentinel sees one consistent address; ``stalled`` holds back the primary's
    stream to replicas only (a connection that sent PSYNC), and what it held is lost when
    the relay is closed: a replication link that falls behind and then breaks with the
    primary (on plain loopback the kernel would still deliver those bytes late)."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = port
        self.stalled = threading.Event()
        self.closed = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self._socks: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target), timeout=1)
                upstream.settimeout(None)
            except OSError:
                client.close()  # the primary is gone: refuse, as it would
                continue
            self._socks += [client, upstream]
            link = {"replication": False}
            threading.Thread(target=self._pump, args=(client, upstream, link, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, link, True), daemon=True).start()

    def _pump(self, src: Any, dst: Any, link: dict[str, bool], towards_client: bool) -> None:
        held = b""
        try:
            while not self.closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                if not towards_client and (b"PSYNC" in data or b"SYNC" in data):
                    link["replication"] = True
                held += data
                if not (towards_client and link["replication"] and self.stalled.is_set()):
                    dst.sendall(held)
                    held = b""
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.close()
                except OSError:
                    pass

    def close(self) -> None:
        self.closed.set()
        for sock in self._socks:
            try:
                sock.close()
            except OSError:
                pass
