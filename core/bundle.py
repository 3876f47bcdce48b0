"""Air-gap bundles: plain tar files of JSON and PEM/DER parts, a manifest, and its seal.

A bundle holds `manifest.json` (format, bundle id, sequence, CA identity, counts, and the
SHA-256 of every other part), the parts, and the manifest's seal: `manifest.mac` (the online
relay's HMAC-SHA256 over the manifest's SHA-256, on a request bundle) or `manifest.p7s` (a
detached CMS signature by the CA key, on a results bundle; core.cms). Any tar reads it; the
members are written in a fixed order with fixed metadata, so the same parts make the same bytes.

`open_bundle` refuses a bundle whole (`BundleRefused`, naming the part) when it is not a tar of
regular files, its manifest's seal does not verify (`relay_mac_check`, `ca_signature_check`),
or it lacks a part its manifest lists, holds one it does not, or a part's digest differs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import json
import secrets
import tarfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from core.cms import CMSError, verify_detached
from core.errors import RefusalCode, Rejected

MANIFEST = "manifest.json"
RELAY_MAC = "manifest.mac"
CA_SIGNATURE = "manifest.p7s"
REQUESTS_FORMAT = "casign-airgap-requests/1"
RESULTS_FORMAT = "casign-airgap-results/1"
RELAY_KEY_BYTES = 32
# A bundle bigger than this (or a part, or a manifest) is refused unread.
MAX_BUNDLE_BYTES = 2**31
MAX_MANIFEST_BYTES = 16 * 2**20
_FIXED_MTIME = 0


class BundleRefused(Rejected):
    """A bundle refused whole; `part` names the member that failed (or the file itself)."""

    def __init__(self, code: RefusalCode, part: str, message: str) -> None:
        super().__init__(code, f"{part}: {message}")
        self.part = part


@dataclass(frozen=True)
class Bundle:
    """A bundle's manifest (parsed), its raw bytes, and its other parts by name."""

    manifest: dict[str, Any]
    manifest_bytes: bytes
    parts: dict[str, bytes]
    seal: bytes

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])


def append_log(path: Path, line: str) -> None:
    """Add a line to a side's bundle log (`airgap/bundles.log`: bundles made and taken)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with path.open("a", encoding="utf-8") as handle:
        handle.write(f"{stamp} {line}\n")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest_bytes(manifest: Mapping[str, Any]) -> bytes:
    """The manifest as written: canonical JSON (sorted keys), one trailing newline."""
    return (json.dumps(manifest, sort_keys=True, indent=1) + "\n").encode()


def write_bundle(
    path: Path, manifest: Mapping[str, Any], parts: Mapping[str, bytes], seal_name: str, seal: bytes
) -> None:
    """Write the tar: manifest, parts in name order, then the seal; all or nothing."""
    from core.files import PUBLIC_MODE, write_file_atomically

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        members = [(MANIFEST, manifest_bytes(manifest))]
        members += sorted(parts.items())
        members.append((seal_name, seal))
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = _FIXED_MTIME
            info.mode = 0o444
            tar.addfile(info, io.BytesIO(data))
    write_file_atomically(path, buffer.getvalue(), PUBLIC_MODE)


def with_digests(manifest: Mapping[str, Any], parts: Mapping[str, bytes]) -> dict[str, Any]:
    """`manifest` with the SHA-256 of every part, by name."""
    return {**manifest, "parts": {name: sha256_hex(data) for name, data in sorted(parts.items())}}


def open_bundle(
    path: Path, expected_format: str, seal_name: str, check_seal: Callable[[bytes, bytes], None]
) -> Bundle:
    """Read a bundle, check its manifest's seal with `check_seal(manifest, seal)`, then every
    part against the manifest; BundleRefused naming the part that failed."""
    members = _read_members(path)
    raw_manifest = members.pop(MANIFEST, None)
    if raw_manifest is None:
        raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, MANIFEST, "the bundle has no manifest")
    seal = members.pop(seal_name, None)
    if seal is None:
        raise BundleRefused(
            RefusalCode.BUNDLE_MALFORMED, seal_name, "the bundle's manifest is not sealed"
        )
    check_seal(raw_manifest, seal)  # first: only a sealed manifest's digests are worth reading
    try:
        manifest = json.loads(raw_manifest)
        digests = manifest["parts"]
        if manifest.get("format") != expected_format or not isinstance(digests, dict):
            raise ValueError(f"not a {expected_format} manifest")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, MANIFEST, str(exc)) from None
    for name in sorted(set(digests) - set(members)):
        raise BundleRefused(
            RefusalCode.BUNDLE_PART_ALTERED, name, "the manifest lists it, the bundle lacks it"
        )
    for name in sorted(set(members) - set(digests)):
        raise BundleRefused(
            RefusalCode.BUNDLE_PART_ALTERED, name, "the bundle holds it, the manifest does not"
        )
    for name in sorted(members):
        if not hmac.compare_digest(sha256_hex(members[name]), str(digests[name])):
            raise BundleRefused(
                RefusalCode.BUNDLE_PART_ALTERED,
                name,
                "its SHA-256 is not the one the manifest lists (altered in transit?)",
            )
    return Bundle(manifest, raw_manifest, members, seal)


def _read_members(path: Path) -> dict[str, bytes]:
    """Every member of the tar, by name; BundleRefused for anything but distinct regular files."""
    name = path.name
    try:
        if path.stat().st_size > MAX_BUNDLE_BYTES:
            raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, name, "the file is too large")
        members: dict[str, bytes] = {}
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isfile():
                    raise BundleRefused(
                        RefusalCode.BUNDLE_MALFORMED, info.name, "not a regular file"
                    )
                if info.name in members:
                    raise BundleRefused(
                        RefusalCode.BUNDLE_MALFORMED, info.name, "the bundle holds it twice"
                    )
                handle = tar.extractfile(info)
                assert handle is not None
                members[info.name] = handle.read()
    except (tarfile.TarError, EOFError) as exc:
        raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, name, f"not a tar file ({exc})") from None
    return members


# -- the online relay's MAC --------------------------------------------------------------------


def read_relay_key(path: Path) -> bytes:
    """The relay key (hex, one line) shared by the online relay and the offline signer."""
    key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    if len(key) < RELAY_KEY_BYTES:
        raise ValueError(f"{path}: the relay key is shorter than {RELAY_KEY_BYTES} bytes")
    return key


def make_relay_key(path: Path) -> bytes:
    """Make the relay key at `path` (0400) unless it is there; return the key."""
    from core.files import KEY_MODE, write_file_atomically

    if not path.exists():
        with contextlib.suppress(FileExistsError):  # made meanwhile by another export
            write_file_atomically(
                path, secrets.token_hex(RELAY_KEY_BYTES) + "\n", KEY_MODE, replace=False
            )
    return read_relay_key(path)


def relay_mac(key: bytes, manifest: bytes) -> bytes:
    """The `manifest.mac` part: the manifest's SHA-256, and the HMAC over it."""
    digest = sha256_hex(manifest)
    mac = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
    return (
        json.dumps({"algorithm": "hmac-sha256", "manifest_sha256": digest, "mac": mac}) + "\n"
    ).encode()


def relay_mac_check(key: bytes) -> Callable[[bytes, bytes], None]:
    """The seal check of a request bundle: the relay's MAC, with `key`."""
    return lambda manifest, seal: check_relay_mac(manifest, seal, key)


def check_relay_mac(manifest: bytes, seal_bytes: bytes, key: bytes) -> None:
    """Refuse a request bundle whose manifest the relay did not seal, naming the part."""
    try:
        seal = json.loads(seal_bytes)
        digest, mac = str(seal["manifest_sha256"]), str(seal["mac"])
    except (ValueError, KeyError, TypeError):
        raise BundleRefused(RefusalCode.BUNDLE_MALFORMED, RELAY_MAC, "not a relay MAC") from None
    expected = hmac.new(key, digest.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, mac):
        raise BundleRefused(
            RefusalCode.BUNDLE_BAD_SIGNATURE,
            RELAY_MAC,
            "the relay's MAC does not verify with this CA folder's relay key",
        )
    if not hmac.compare_digest(digest, sha256_hex(manifest)):
        raise BundleRefused(
            RefusalCode.BUNDLE_PART_ALTERED, MANIFEST, "it is not the manifest the relay sealed"
        )


# -- the CA's signature ------------------------------------------------------------------------


def ca_signature_check(intermediate: x509.Certificate) -> Callable[[bytes, bytes], None]:
    """The seal check of a results bundle: the CA's signature, by `intermediate`'s key."""
    return lambda manifest, seal: check_ca_signature(manifest, seal, intermediate)


def check_ca_signature(manifest: bytes, seal: bytes, intermediate: x509.Certificate) -> None:
    """Refuse a results bundle whose manifest the CA key did not sign, naming the part."""
    try:
        verify_detached(manifest, seal, intermediate)
    except CMSError as exc:
        if exc.content_altered:
            raise BundleRefused(
                RefusalCode.BUNDLE_PART_ALTERED, MANIFEST, "it is not the manifest the CA signed"
            ) from None
        raise BundleRefused(RefusalCode.BUNDLE_BAD_SIGNATURE, CA_SIGNATURE, str(exc)) from None
