"""docker-compose.yml run outside Docker (no engine here), in step with the file (issue 16 item 10).

Each service's command and environment are read from docker-compose.yml; the image's folders
are made in a temporary root as the Dockerfile makes them (owned by its user, with its modes),
and each container path is moved under that root (`/src` is this repository, `redis:6379` a
redis-server of the test's own). The image runs every role as its unprivileged `casign` user,
which owns those folders and may write no other user's; run as root, the test runs each role as
root stripped of every capability (`setpriv`), which may likewise write only its own folders
(another user's Python, under /root, would be out of reach); otherwise as the current user.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from casign.supervise import stop_process_group
from core.layout import folder_names
from store.acl import KeyScope, Role
from store.embedded import redis_server_binary, redis_server_version
from tests.openssl_cli import openssl
from tests.softhsm_token import SOFTHSM_AVAILABLE, SOFTHSM_SKIP_REASON

REPO = Path(__file__).resolve().parents[1]
COMPOSE: dict[str, Any] = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
SERVICES: dict[str, Any] = COMPOSE["services"]
NOBODY = 65534
# Root without capabilities: the owner of its own folders, a stranger to every other user's.
NO_CAPABILITIES = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--no-new-privs"]

needs_softhsm = pytest.mark.skipif(
    not SOFTHSM_AVAILABLE or shutil.which("pkcs11-tool") is None,
    reason=SOFTHSM_SKIP_REASON + " (and pkcs11-tool from opensc)",
)


def image_folders() -> dict[str, int]:
    """The folders the Dockerfile makes for its user (home, `install -d -o casign -m MODE`)."""
    folders = {}
    home = re.search(r"useradd [^\n]*--home-dir (\S+) casign", DOCKERFILE)
    assert home is not None, "the Dockerfile no longer makes the casign user's home"
    folders[home.group(1)] = 0o755
    for mode, paths in re.findall(r"install -d -o casign -m (\d+) ([^\\&\n]+)", DOCKERFILE):
        for path in paths.split():
            folders[path] = int(mode, 8)
    return folders


def script_defaults(script: Path) -> dict[str, str]:
    """`name=${VARIABLE:-DEFAULT}` lines of an entry script: VARIABLE -> DEFAULT, with the
    script's earlier names in DEFAULT expanded (`$producers/$producer`)."""
    names: dict[str, str] = {}
    variables: dict[str, str] = {}
    pattern = re.compile(r"^(?:export )?(\w+)=\$\{(\w+):-([^}]*)\}", re.MULTILINE)
    for name, variable, default in pattern.findall(script.read_text()):
        expanded = re.sub(
            r"\$(\w+)", lambda found: names.get(found.group(1), found.group(0)), default
        )
        names[name] = expanded
        if "$" not in expanded:
            variables[variable] = expanded
    return variables


@dataclass
class Container:
    """The image's file system under `root`, and the user its roles run as."""

    root: Path
    redis_port: int
    drop_privileges: bool  # run as root has every capability taken away

    def host_path(self, path: str) -> str:
        if path == "/src" or path.startswith("/src/"):
            return str(REPO) + path[len("/src") :]
        return str(self.root) + path

    def host_value(self, value: str) -> str:
        """A command word or variable with its container paths and Redis host moved here."""
        value = value.replace("redis:6379", f"127.0.0.1:{self.redis_port}")
        for folder in (*image_folders(), "/src", "/data"):
            if value == folder or value.startswith(folder + "/"):
                return self.host_path(value)
        return value

    def environment(self, service: str, scripts: Sequence[Path] = ()) -> dict[str, str]:
        """The service's environment, moved here, over the scripts' own path defaults."""
        base = {key: value for key, value in os.environ.items() if not key.startswith("CASIGN_")}
        base["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', os.defpath)}"
        base["HOME"] = self.host_path("/var/lib/casign")
        for script in scripts:
            for variable, default in script_defaults(script).items():
                if default.startswith("/"):
                    base[variable] = self.host_value(default)
        listed = SERVICES[service].get("environment") or {}
        return base | {key: self.host_value(str(value)) for key, value in listed.items()}

    def command(self, service: str) -> list[str]:
        return [self.host_value(str(word)) for word in SERVICES[service]["command"]]

    def as_user(self, command: Sequence[str]) -> list[str]:
        return [*NO_CAPABILITIES, *command] if self.drop_privileges else list(command)

    def run(
        self, command: Sequence[str], env: Mapping[str, str], timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.as_user(command),
            env=dict(env),
            cwd=self.host_path("/var/lib/casign"),  # the image's WORKDIR
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(
        self, command: Sequence[str], env: Mapping[str, str], log: Path
    ) -> subprocess.Popen[bytes]:
        with log.open("wb") as output:
            return subprocess.Popen(
                self.as_user(command),
                env=dict(env),
                cwd=self.host_path("/var/lib/casign"),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def container() -> Iterator[Container]:
    """The image's folders, this user's as they are the image user's, in a root of their own."""
    root = Path(tempfile.mkdtemp(prefix="casign-compose-"))
    for folder, mode in {**image_folders(), "/data": 0o755}.items():
        path = root / folder.lstrip("/")
        path.mkdir(parents=True, exist_ok=True)
        path.chmod(mode)
    try:
        yield Container(root, _free_port(), drop_privileges=os.geteuid() == 0)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_the_producer_writes_into_a_folder_its_user_owns() -> None:
    producer = SERVICES["producer"]
    out = producer["command"][producer["command"].index("--out") + 1]
    (mount,) = [volume for volume in producer["volumes"] if volume.split(":")[1] == out]
    source = mount.split(":")[0]
    assert not source.startswith((".", "/", "~")), f"{mount}: a host folder the user may not write"
    assert source in COMPOSE["volumes"]
    assert out in image_folders(), f"the Dockerfile does not make {out} its user's"


def refused_marker(signer_script: Path) -> str:
    """The file docker-signer.sh writes on a refusal, which the signer's healthcheck tests."""
    return script_defaults(signer_script)["CASIGN_SIGNER_REFUSED"]


def wait_refused(container: Container, signer: subprocess.Popen[bytes], log: Path) -> str:
    """Wait until the signer reports a refusal; check it then waits (no exit, so no restart
    loop under `restart: always`) and ends with 0 on SIGTERM. The log."""
    marker = Path(container.host_path(refused_marker(REPO / "softhsm" / "docker-signer.sh")))
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert signer.poll() is None, log.read_text(errors="replace")
        assert time.monotonic() < deadline, log.read_text(errors="replace")
        time.sleep(0.1)
    time.sleep(1.0)
    assert signer.poll() is None, "the refused signer exited: Docker would start it again"
    stop_process_group(signer, timeout=10)
    assert signer.returncode == 0, log.read_text(errors="replace")
    text = log.read_text(errors="replace")
    assert "waiting here instead of restarting" in text and "Traceback" not in text, text
    assert marker.read_text().startswith("casign signer: ")
    return text


def test_a_signer_that_refuses_to_start_says_so_and_waits(
    container: Container, tmp_path: Path
) -> None:
    signer = SERVICES["signer"]
    assert signer["restart"] == "always"  # a crash is restarted; a refusal never exits
    script = Path(container.command("signer")[0])
    assert refused_marker(script) in " ".join(signer["healthcheck"]["test"])
    env = container.environment("signer", [script])
    log = tmp_path / "signer.log"
    text = wait_refused(container, container.start(container.command("signer"), env, log), log)
    assert "no set-up found" in text


def _redis_7() -> str:
    binary = redis_server_binary()
    if int(redis_server_version(binary).split(".")[0]) < 7:
        pytest.skip(f"the roles' ACL users need Redis 7; {binary} is older")
    return binary


def _wait_for_the_ca_record(container: Container, signer_log: Path) -> None:
    """As the operator, wait until the signer has recorded its CA (a producer names it)."""
    ca = Path(container.host_path("/var/lib/casign/ca"))
    password = (ca / "intermediate" / "private" / "redis" / "operator.redis-password").read_text()
    scope = KeyScope(folder_names(ca).store_prefix)  # the CA's own names, `casign-TAG`
    deadline = time.monotonic() + 90
    with redis.Redis(
        host="127.0.0.1", port=container.redis_port, db=1,
        username=scope.user_name(Role.OPERATOR), password=password.strip(),
    ) as operator:  # fmt: skip
        while not operator.hget(scope.keys.ca, "id"):
            assert time.monotonic() < deadline, signer_log.read_text(errors="replace")[-3000:]
            time.sleep(0.2)


@needs_softhsm
def test_the_services_run_as_compose_starts_them(container: Container, tmp_path: Path) -> None:
    """setup (after a first run that failed with the token made), redis, signer, producer."""
    binary = _redis_7()
    setup_command = container.command("setup")
    setup_env = container.environment("setup", [Path(setup_command[0])])
    # What a first set-up that failed in `casign init` could leave: a token already holding
    # the key `init` would make, and no CA. The next `up` must not fail on it for ever.
    hsm = container.host_path("/var/lib/casign/softhsm")
    made = container.run(
        [str(REPO / "softhsm" / "make-token.sh"), hsm, "casign", "intermediate"], setup_env
    )
    assert made.returncode == 0, made.stderr
    for attempt in range(2):  # every `docker compose up` runs it
        setup = container.run(setup_command, setup_env)
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert ("set aside" in setup.stderr or "moved to" in setup.stderr) == (attempt == 0)

    redis_command = [
        binary,
        *(container.host_value(str(word)) for word in SERVICES["redis"]["command"][1:]),
    ]
    redis_command += ["--port", str(container.redis_port), "--bind", "127.0.0.1"]
    redis_command += ["--dir", container.host_path("/data")]
    server = container.start(redis_command, container.environment("redis"), tmp_path / "redis.log")
    signer_log = tmp_path / "signer.log"
    signer_command = container.command("signer")
    signer_env = container.environment("signer", [Path(signer_command[0])])
    try:
        signer = container.start(signer_command, signer_env, signer_log)
        try:
            _wait_for_the_ca_record(container, signer_log)
            producer_command = container.command("producer")
            producer_env = container.environment("producer", [Path(producer_command[0])])
            request = container.run(producer_command, producer_env, timeout=180)
            assert request.returncode == 0, (
                request.stdout + request.stderr + signer_log.read_text(errors="replace")[-3000:]
            )
        finally:
            stop_process_group(signer, timeout=60)
        assert signer.returncode == 0, signer_log.read_text(errors="replace")[-3000:]
        out = Path(container.host_path("/out"))
        openssl("verify", "-CAfile", out / "ca-chain.cert.pem", out / "www.example.com.cert.pem")
        if container.drop_privileges:
            # What ./out, a host folder of another user, was to the producer: one line, no
            # traceback, nothing queued (the README's compose file wrote there until issue 16).
            host_out = tmp_path / "host-out"
            host_out.mkdir()
            os.chown(host_out, NOBODY, NOBODY)
            words = [
                host_out.as_posix() if word == out.as_posix() else word for word in producer_command
            ]
            denied = container.run(words, producer_env, timeout=60)
            assert denied.returncode != 0 and "Traceback" not in denied.stderr, denied.stderr
            assert str(host_out) in denied.stderr

        # A refusal (here: producers.toml gone, so the worker would serve anyone) is reported
        # once, and the signer waits rather than exit into a restart loop.
        producers = Path(container.host_path("/var/lib/casign/ca/intermediate/producers.toml"))
        producers.rename(producers.with_suffix(".aside"))
        refused_log = tmp_path / "refused.log"
        refused = container.start(signer_command, signer_env, refused_log)
        text = wait_refused(container, refused, refused_log)
        assert "refused to start" in text and "producers.toml" in text
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=10)
