"""CRL state: the number counter (RFC 5280 5.2.3) and the newest CRL published."""

from __future__ import annotations

import redis
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from store.boundary import text, translated
from store.keys import KeySpace
from store.scripts import Lua, LuaScripts


class CRLStore:
    """`P:crl:number` and `P:crl:latest`."""

    def __init__(self, client: redis.Redis, keys: KeySpace, scripts: LuaScripts) -> None:
        self._client = client
        self._keys = keys
        self._scripts = scripts

    @translated
    def next_number(self) -> int:
        """Draw the next CRL number (RFC 5280 5.2.3: monotonically increasing)."""
        return int(self._client.incr(self._keys.crl_number))

    @translated
    def raise_number(self, next_number: int) -> int:
        """Make the next number drawn at least `next_number` (OpenSSL's `crlnumber` file)."""
        result = self._scripts[Lua.COUNTER_RAISE](
            keys=[self._keys.crl_number], args=[next_number - 1]
        )
        return int(text(result)) + 1

    @translated
    def publish(self, crl: x509.CertificateRevocationList, number: int) -> bool:
        """Make `crl` the latest CRL unless a newer number is published already."""
        pem = crl.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return bool(
            self._scripts[Lua.CRL_PUBLISH](
                keys=[self._keys.crl_latest],
                args=[
                    number,
                    pem,
                    crl.last_update_utc.isoformat(),
                    (crl.next_update_utc or crl.last_update_utc).isoformat(),
                ],
            )
        )

    @translated
    def latest(self) -> x509.CertificateRevocationList | None:
        """The newest CRL published, if any."""
        pem = self._client.hget(self._keys.crl_latest, "pem")
        return x509.load_pem_x509_crl(text(pem).encode("ascii")) if pem else None
