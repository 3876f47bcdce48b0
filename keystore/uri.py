"""Key URIs: `file:PATH[?pin-source=...]` and RFC 7512 `pkcs11:token=..;object=..[?...]`."""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import unquote

from core.errors import ConfigurationError
from core.secret_source import read_secret_source

# RFC 7512 section 2.3: pin-value puts the secret in the URI itself; we refuse it so a PIN
# never ends up in a config file, a job or a log line that prints the URI.
_FORBIDDEN_QUERY = frozenset({"pin-value"})


@dataclass(frozen=True)
class KeyURI:
    """A parsed key URI; `str()` gives it back without ever holding a secret."""

    scheme: str
    path: str = ""
    attributes: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    text: str = ""

    def __str__(self) -> str:
        return self.text

    @property
    def pin_source(self) -> str | None:
        return self.query.get("pin-source")

    def read_pin(self) -> str | None:
        """The PIN or passphrase named by `pin-source` (`file:F` or `env:VAR`), or None."""
        source = self.pin_source
        if source is None:
            return None
        return read_secret_source(source, f"{self}: pin-source").rstrip("\r\n")


def _split_pairs(text: str, separator: str, uri: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in filter(None, text.split(separator)):
        name, equals, value = item.partition("=")
        if not equals:
            raise ConfigurationError(f"{uri}: {item!r} is not NAME=VALUE")
        pairs[unquote(name)] = unquote(value)
    return pairs


def parse_key_uri(text: str) -> KeyURI:
    """Parse a key URI; a bare path is taken as `file:PATH`."""
    if ":" not in text or text.startswith(("/", ".")):
        text = f"file:{text}"
    scheme, _, rest = text.partition(":")
    scheme = scheme.lower()
    body, _, query_text = rest.partition("?")
    query = _split_pairs(query_text, "&", scheme + ":...")
    attributes = _split_pairs(body, ";", scheme + ":...") if scheme == "pkcs11" else {}
    # Checked in the path too and in any case: every error message quotes the URI's text.
    forbidden = _FORBIDDEN_QUERY & {name.lower() for name in (*query, *attributes)}
    if forbidden:
        raise ConfigurationError(
            f"{scheme}: URI carries {sorted(forbidden)[0]}; name the secret with "
            "pin-source=file:PATH or pin-source=env:VARIABLE instead"
        )
    source = query.get("pin-source")
    if source is not None and not source.startswith(("file:", "env:")):
        # Anything else may be the PIN itself, typed where its source belongs: never echo it.
        raise ConfigurationError(f"{scheme}: pin-source must be file:PATH or env:VARIABLE")
    safe_text = f"{scheme}:{body}" + (f"?{query_text}" if query_text else "")
    if scheme == "pkcs11":
        return KeyURI(scheme, "", attributes, query, safe_text)
    if scheme == "file":
        path = unquote(body.removeprefix("//"))
        if not path:
            raise ConfigurationError(f"{safe_text}: a file key URI needs a path")
        return KeyURI(scheme, path, {}, query, safe_text)
    return KeyURI(scheme, body, {}, query, safe_text)
