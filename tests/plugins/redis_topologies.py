"""Real Redis topologies on loopback ports, for the redis-limit tests and
tests/plugins/bench_redis_limit.py: a Redis Cluster made with
``redis-cli --cluster create``, a Sentinel-managed master and replica, and a
TLS-only Redis with an ACL user and a certificate made here.

Every process runs in its own directory without persistence and is killed by
``stop()``. Nothing here imports pytest: conftest.py wraps these in fixtures
and skips, with the reason, when a program is missing (:func:`missing`).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

START_DEADLINE_S = 10.0
MASTER_NAME = "mymaster"

# The Debian packages that hold each program (CI installs them: .ci/run).
PACKAGES = {"redis-server": "redis-server", "redis-cli": "redis-tools",
            "redis-sentinel": "redis-sentinel"}  # fmt: skip


def missing(*programs: str) -> str | None:
    """Why these programs cannot run here, or None when all are on PATH."""
    absent = [p for p in programs if shutil.which(p) is None]
    if not absent:
        return None
    packages = " ".join(dict.fromkeys(PACKAGES.get(p, p) for p in absent))
    return f"{', '.join(absent)} not installed (apt-get install {packages})"


def free_port(exclude: Iterable[int] = ()) -> int:
    """A loopback port free right now (the kernel's choice)."""
    taken = set(exclude)
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port


def answers(port: int, context: ssl.SSLContext | None = None) -> bool:
    """Whether something on ``port`` answers PING like Redis (PONG, or an
    error such as NOAUTH from a server that wants a password)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as raw:
            if context is None:
                raw.sendall(b"PING\r\n")
                return raw.recv(64)[:1] in (b"+", b"-")
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                s.sendall(b"PING\r\n")
                return s.recv(64)[:1] in (b"+", b"-")
    except OSError:
        return False


class RedisProcess:
    """One redis-server or redis-sentinel on a loopback port."""

    def __init__(
        self,
        directory: Path,
        port: int,
        args: Sequence[str] = (),
        program: str = "redis-server",
        config: str | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.directory = directory
        self.port = port
        self.args = list(args)
        self.program = program
        self.config = config  # written to a file first (Sentinel rewrites its own)
        self.tls = tls  # TLS only, on ``port``; how to reach it for the readiness check
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> RedisProcess:
        argv = [shutil.which(self.program) or self.program]
        if self.config is not None:
            path = self.directory / "redis.conf"
            path.write_text(self.config)
            argv.append(str(path))
        ports = ["--port", str(self.port)] if self.tls is None else [
            "--port", "0", "--tls-port", str(self.port)]  # fmt: skip
        argv += [*ports, "--bind", "127.0.0.1", "--dir", str(self.directory),
                 "--daemonize", "no", "--loglevel", "warning"]  # fmt: skip
        if self.program == "redis-server":
            argv += ["--save", "", "--appendonly", "no"]
        argv += self.args
        with open(self.directory / "redis.log", "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_DEADLINE_S
        try:
            while not answers(self.port, self.tls):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.program} on port {self.port} did not start:\n"
                                       f"{self.log_text()}")  # fmt: skip
                time.sleep(0.01)
        except BaseException:
            self.stop()
            raise
        return self

    def log_text(self) -> str:
        return (self.directory / "redis.log").read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server vanishes mid-conversation, as in a crash."""
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.terminate()
            try:
                self.proc.wait(3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def client(self, **options: Any) -> Any:
        """A synchronous redis-py client (use it in a ``with`` block)."""
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True, **options)


def _start_with_retries(make: Any, attempts: int = 3) -> Any:
    """Ports are free when chosen but could be taken before the server binds."""
    for attempt in range(attempts):
        try:
            return make()
        except RuntimeError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def wait_until(check: Any, what: str, timeout: float = START_DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except Exception:  # a server still starting may refuse or answer LOADING
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


# --------------------------------------------------------------------------- single


def start_redis(directory: Path, args: Sequence[str] = ()) -> RedisProcess:
    return _start_with_retries(lambda: RedisProcess(directory, free_port(), args).start())  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- cluster


class Cluster:
    """``masters`` redis-servers with cluster-enabled, joined by
    ``redis-cli --cluster create`` (``replicas`` replicas per master)."""

    def __init__(self, directory: Path, masters: int = 3, replicas: int = 0,
                 node_timeout_ms: int = 1000) -> None:  # fmt: skip
        self.directory = directory
        self.size = masters * (1 + replicas)
        self.masters = masters
        self.replicas = replicas
        self.node_timeout_ms = node_timeout_ms
        self.nodes: list[RedisProcess] = []

    def start(self) -> Cluster:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> Cluster:
        for i in range(self.size):
            taken = [n.port for n in self.nodes]
            port = free_port(taken)
            bus = free_port([*taken, port])
            node = RedisProcess(self.directory / f"node-{i}", port, [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(self.node_timeout_ms),
                "--cluster-port", str(bus),
                # A replica promotes itself however stale its link: the tests
                # kill masters on purpose.
                "--cluster-replica-validity-factor", "0",
                # The masters that are up keep serving their slots while one is down.
                "--cluster-require-full-coverage", "no",
                "--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1",
            ])  # fmt: skip
            self.nodes.append(_start_with_retries(node.start))
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(n.address for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}"
                               f"{created.stderr}")  # fmt: skip
        for node in self.nodes:
            wait_until(lambda node=node: self._ready(node), f"cluster node {node.address}")
        return self

    def _ready(self, node: RedisProcess) -> bool:
        with node.client() as r:
            info = r.cluster("info")
            known = int(info["cluster_known_nodes"])
            if info["cluster_state"] != "ok" or known != self.size:
                return False
            # Every node knows every master's slots, and replicas are in sync.
            if len(r.cluster("slots")) != self.masters:
                return False
            replication = r.info("replication")
            return replication["role"] == "master" or replication["master_link_status"] == "up"

    @property
    def seeds(self) -> list[str]:
        return [n.address for n in self.nodes[:2]]

    def live(self) -> list[RedisProcess]:
        return [n for n in self.nodes if n.alive()]

    def master_ports(self) -> list[int]:
        """The masters now, as some live node sees them."""
        for node in self.live():
            try:
                with node.client() as r:
                    return sorted({int(s[2][1]) for s in r.cluster("slots")})
            except Exception:
                continue
        return []

    def node(self, port: int) -> RedisProcess:
        return next(n for n in self.nodes if n.port == port)

    def master_of(self, key: str) -> int:
        """The port of the master serving ``key`` now."""
        from redis.crc import key_slot

        slot = key_slot(key.encode())
        for node in self.live():
            try:
                with node.client() as r:
                    for start, end, master, *_ in r.cluster("slots"):
                        if start <= slot <= end:
                            return int(master[1])
            except Exception:
                continue
        raise LookupError(key)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


# --------------------------------------------------------------------------- sentinel


class SentinelSetup:
    """A master, one replica and ``sentinels`` redis-sentinels watching them
    (quorum: a majority), with a short down-after-milliseconds so that a
    killed master is replaced in about a second."""

    def __init__(self, directory: Path, sentinels: int = 1, down_after_ms: int = 500,
                 failover_timeout_ms: int = 2000) -> None:  # fmt: skip
        self.directory = directory
        self.count = sentinels
        self.down_after_ms = down_after_ms
        self.failover_timeout_ms = failover_timeout_ms
        self.master: RedisProcess | None = None
        self.replica: RedisProcess | None = None
        self.sentinels: list[RedisProcess] = []

    def start(self) -> SentinelSetup:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> SentinelSetup:
        fast = ["--repl-diskless-sync-delay", "0", "--repl-ping-replica-period", "1"]
        self.master = start_redis(self.directory / "master", fast)
        self.replica = start_redis(self.directory / "replica", [
            *fast, "--replicaof", "127.0.0.1", str(self.master.port),
        ])  # fmt: skip
        wait_until(self._replica_in_sync, "the replica to sync")
        for i in range(self.count):
            config = "\n".join([
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} "
                f"{self.count // 2 + 1}",
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}",
                f"sentinel failover-timeout {MASTER_NAME} {self.failover_timeout_ms}",
                f"sentinel parallel-syncs {MASTER_NAME} 1",
                "",
            ])  # fmt: skip
            ports = [self.master.port, self.replica.port, *(s.port for s in self.sentinels)]
            sentinel = RedisProcess(self.directory / f"sentinel-{i}", free_port(ports),
                                    program="redis-sentinel", config=config)  # fmt: skip
            self.sentinels.append(_start_with_retries(sentinel.start))
        wait_until(self._sentinels_ready, "the sentinels to know the replica and each other")
        return self

    def _replica_in_sync(self) -> bool:
        assert self.replica is not None
        with self.replica.client() as r:
            return bool(r.info("replication")["master_link_status"] == "up")

    def _sentinels_ready(self) -> bool:
        for sentinel in self.sentinels:
            with sentinel.client() as r:
                master = r.sentinel_master(MASTER_NAME)
                replicas = r.sentinel_slaves(MASTER_NAME)
                if int(master["num-other-sentinels"]) != self.count - 1:
                    return False
                if not any(not (s["is_sdown"] or s["is_odown"]) for s in replicas):
                    return False
        return True

    @property
    def addresses(self) -> list[str]:
        return [s.address for s in self.sentinels]

    def master_port(self) -> int:
        """The master's port as the first sentinel that answers sees it."""
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as r:
                    return int(r.sentinel_get_master_addr_by_name(MASTER_NAME)[1])
            except Exception:
                continue
        raise LookupError("no sentinel answers")

    def promoted(self, old_port: int) -> bool:
        """Whether the sentinels moved the master off ``old_port`` and the new
        master takes writes."""
        port = self.master_port()
        if port == old_port:
            return False
        server = self.master if self.master and self.master.port == port else self.replica
        assert server is not None
        with server.client() as r:
            return bool(r.info("replication")["role"] == "master")

    def stop(self) -> None:
        for process in (*self.sentinels, self.replica, self.master):
            if process is not None:
                process.stop()


# --------------------------------------------------------------------------- TLS


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost (its own CA),
    made with the ``cryptography`` package: (certificate, key) PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "redis-limit test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class TlsRedis:
    """A redis-server that speaks TLS only, with an ACL user ``limiter`` and
    the default user disabled: every client must authenticate."""

    USER = "limiter"
    PASSWORD = "s3cret-Pa55"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ca, self.key = make_certificate(directory / "tls")
        self.server: RedisProcess | None = None

    def start(self) -> TlsRedis:
        def make() -> RedisProcess:
            context = ssl.create_default_context(cafile=str(self.ca))
            return RedisProcess(self.directory / "redis", free_port(), [
                "--tls-cert-file", str(self.ca),
                "--tls-key-file", str(self.key), "--tls-ca-cert-file", str(self.ca),
                "--tls-auth-clients", "no",
                "--user", self.USER, "on", f">{self.PASSWORD}", "~*", "&*", "+@all",
                "--user", "default", "off",
            ], tls=context).start()  # fmt: skip

        self.server = _start_with_retries(make)
        return self

    @property
    def tls_port(self) -> int:
        assert self.server is not None
        return self.server.port

    def client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.tls_port, ssl=True,
                           ssl_ca_certs=str(self.ca), username=self.USER,
                           password=self.PASSWORD, decode_responses=True)  # fmt: skip

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
