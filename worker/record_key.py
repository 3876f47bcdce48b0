"""The record MAC key: a secret only signers hold, under which each issuance record is sealed.

The key is 32 random bytes in `intermediate/private/record-mac.key`, mode 0400, made by
`casign init` and `casign adopt`, or by the first signer that starts on a CA folder made before
records were sealed. Every signer of one CA (every host) needs the same file: copy it with the
intermediate key. A record's MAC is HMAC-SHA256 under it over a domain tag, the store prefix,
the job id and the record's canonical bytes, so a record can be neither forged nor altered, nor
moved to another job or another store, by anyone who can only write to the store.
"""

from __future__ import annotations

import hmac
import json
import logging
import secrets
import stat
from pathlib import Path

from core.errors import ConfigurationError
from core.files import KEY_MODE, write_file_atomically

log = logging.getLogger("casign.worker")

RECORD_KEY_NAME = "record-mac.key"
RECORD_KEY_BYTES = 32
RECORD_MAC_TAG = "casign record v1"  # a new record layout takes a new tag
_MAC_PREFIX = "hmac-sha256:"


class RecordKey:
    """The signers' record MAC key; it never shows in a repr, a log line or a message."""

    __slots__ = ("_secret",)

    def __init__(self, secret: bytes) -> None:
        if len(secret) != RECORD_KEY_BYTES:
            raise ValueError(f"a record key is {RECORD_KEY_BYTES} bytes, not {len(secret)}")
        self._secret = secret

    def __repr__(self) -> str:
        return "RecordKey(<secret>)"

    def mac(self, store_prefix: str, job_id: str, canonical: bytes) -> str:
        """The MAC of a record stored under `store_prefix` for `job_id`, as stored text."""
        # JSON strings make the split between tag, prefix and job id unambiguous.
        header = json.dumps([RECORD_MAC_TAG, store_prefix, job_id], ensure_ascii=True)
        digest = hmac.digest(self._secret, header.encode() + b"\n" + canonical, "sha256")
        return _MAC_PREFIX + digest.hex()

    def verifies(self, store_prefix: str, job_id: str, canonical: bytes, mac: object) -> bool:
        """Whether `mac` is this key's MAC of the record (compared in constant time)."""
        if not isinstance(mac, str):
            return False
        expected = self.mac(store_prefix, job_id, canonical)
        return hmac.compare_digest(expected.encode(), mac.encode("utf-8", "replace"))


def make_record_key(path: Path) -> None:
    """Write a fresh key to `path` (0400); FileExistsError if one is there, never replaced."""
    write_file_atomically(path, secrets.token_bytes(RECORD_KEY_BYTES), KEY_MODE, replace=False)


def load_record_key(path: Path, *, make_if_absent: bool) -> RecordKey:
    """The key at `path`, made first if absent and allowed (several processes may race: one
    makes it, all read the same); ConfigurationError names the path, never the key."""
    if make_if_absent and not path.exists():
        try:
            make_record_key(path)
            log.warning(
                "made the record MAC key %s: every other signer of this CA must hold this same "
                "file (a signer with another key refuses this one's records)",
                path,
            )
        except FileExistsError:
            pass  # another signer process made it first
        except OSError as exc:
            raise ConfigurationError(
                f"{path}: cannot make the record MAC key ({exc.strerror}); make the folder "
                "writable for the first start, or copy the key from another signer of this CA"
            ) from None
    try:
        mode = path.stat().st_mode
        secret = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"{path}: cannot read the record MAC key ({exc.strerror}); "
            "copy it from another signer of this CA"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"{path}: the record MAC key is open to group or others "
            f"(mode {stat.S_IMODE(mode):04o}); chmod 0400 it"
        )
    if len(secret) != RECORD_KEY_BYTES:
        raise ConfigurationError(
            f"{path}: a record MAC key is {RECORD_KEY_BYTES} bytes, this file holds "
            f"{len(secret)}; restore it from another signer of this CA"
        )
    return RecordKey(secret)
