"""The guide's CA folder on disk: making a new one, and reading one back."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.errors import ConfigurationError
from core.files import write_file_atomically
from core.keys import write_private_key
from keystore import KeyType, SigningKey, generate_key, parse_key_uri
from worker.opensslcnf import intermediate_openssl_cnf, root_openssl_cnf
from worker.profiles import default_profiles_toml

ROOT_DAYS = 7300
INTERMEDIATE_DAYS = 3650
CERT_MODE = 0o444
SETTINGS_NAME = "casign.toml"


@dataclass(frozen=True)
class CAOptions:
    """What `casign init` asks for; defaults are the guide's."""

    root_cn: str = "casign Root CA"
    intermediate_cn: str = "casign Intermediate CA"
    organization: str | None = None
    country: str | None = None
    key_type: KeyType = KeyType.RSA4096
    passphrase_file: Path | None = None
    intermediate_key_uri: str | None = None
    base_url: str | None = None  # where CRL, OCSP and the CA certificate are published


class CAFolder:
    """Paths of a CA folder laid out as the guide lays it out."""

    def __init__(self, root: Path) -> None:
        self.root = root.absolute()
        self.intermediate = self.root / "intermediate"

    @property
    def root_key_path(self) -> Path:
        return self.root / "private" / "ca.key.pem"

    @property
    def root_cert_path(self) -> Path:
        return self.root / "certs" / "ca.cert.pem"

    @property
    def intermediate_key_path(self) -> Path:
        return self.intermediate / "private" / "intermediate.key.pem"

    @property
    def intermediate_cert_path(self) -> Path:
        return self.intermediate / "certs" / "intermediate.cert.pem"

    @property
    def chain_path(self) -> Path:
        return self.intermediate / "certs" / "ca-chain.cert.pem"

    @property
    def profiles_path(self) -> Path:
        return self.intermediate / "profiles.toml"

    @property
    def producers_path(self) -> Path:
        return self.intermediate / "producers.toml"

    @property
    def settings_path(self) -> Path:
        return self.intermediate / SETTINGS_NAME

    @property
    def openssl_cnf_path(self) -> Path:
        return self.intermediate / "openssl.cnf"

    @property
    def index_path(self) -> Path:
        return self.intermediate / "index.txt"

    def exists(self) -> bool:
        return self.intermediate_cert_path.exists()

    def require(self) -> None:
        if not self.exists():
            raise ConfigurationError(
                f"{self.root} is not a CA folder (no intermediate/certs/intermediate.cert.pem); "
                f"make one with `casign init {self.root}`"
            )

    def _read_certificate(self, path: Path) -> x509.Certificate:
        try:
            return x509.load_pem_x509_certificate(path.read_bytes())
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot read ({exc.strerror})") from None
        except ValueError:
            raise ConfigurationError(f"{path}: not a PEM certificate") from None

    def root_certificate(self) -> x509.Certificate:
        self.require()
        return self._read_certificate(self.root_cert_path)

    def intermediate_certificate(self) -> x509.Certificate:
        self.require()
        return self._read_certificate(self.intermediate_cert_path)

    def chain_pem(self) -> str:
        return self.chain_path.read_text(encoding="ascii")

    def settings(self) -> dict[str, object]:
        try:
            return tomllib.loads(self.settings_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(f"{self.settings_path}: {exc}") from None

    def intermediate_key_uri(self) -> str:
        """The intermediate key's URI from `casign.toml`; a relative file path is the folder's."""
        configured = self.settings().get("intermediate_key")
        uri = str(configured) if configured else f"file:{self.intermediate_key_path}"
        parsed = parse_key_uri(uri)
        if parsed.scheme == "file" and not Path(parsed.path).is_absolute():
            return uri.replace(parsed.path, str(self.intermediate / parsed.path), 1)
        return uri


def _name(common_name: str, options: CAOptions) -> x509.Name:
    attributes = []
    if options.country:
        attributes.append(x509.NameAttribute(NameOID.COUNTRY_NAME, options.country))
    if options.organization:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, options.organization))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _ca_certificate(
    subject: x509.Name,
    subject_key: SigningKey,
    issuer: x509.Name,
    issuer_key: SigningKey,
    days: int,
    path_length: int | None,
) -> x509.Certificate:
    """A CA certificate with the guide's v3_ca / v3_intermediate_ca extensions."""
    now = datetime.now(UTC).replace(microsecond=0)
    public_key = subject_key.public_key()
    issuer_public_key = issuer_key.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(issuer_key, _signature_hash(issuer_key))
    )


def _signature_hash(key: SigningKey) -> hashes.SHA256 | hashes.SHA384:
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.key_size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def _write_file(path: Path, data: str, mode: int) -> None:
    write_file_atomically(path, data, mode, replace=False)


def _pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


def init_ca(directory: Path, options: CAOptions) -> CAFolder:
    """Make a new root and intermediate pair in the guide's layout; refuse an existing CA."""
    folder = CAFolder(directory)
    for existing in (folder.root_key_path, folder.root_cert_path, folder.intermediate):
        if existing.exists():
            raise ConfigurationError(
                f"{folder.root} already holds a CA ({existing} exists); refusing to overwrite it"
            )
    passphrase = (
        options.passphrase_file.read_text(encoding="utf-8").rstrip("\r\n")
        if options.passphrase_file
        else None
    )
    if options.passphrase_file is not None and not passphrase:
        raise ConfigurationError(f"{options.passphrase_file}: the passphrase file is empty")

    folder.root.mkdir(parents=True, exist_ok=True)
    for sub in ("certs", "crl", "newcerts", "private"):
        (folder.root / sub).mkdir(exist_ok=True)
        (folder.intermediate / sub).mkdir(parents=True, exist_ok=True)
    (folder.intermediate / "csr").mkdir()
    os.chmod(folder.root / "private", 0o700)
    os.chmod(folder.intermediate / "private", 0o700)

    root_key = options.key_type.generate()
    write_private_key(folder.root_key_path, root_key, passphrase)
    root_name = _name(options.root_cn, options)
    root_cert = _ca_certificate(root_name, root_key, root_name, root_key, ROOT_DAYS, None)
    _write_file(folder.root_cert_path, _pem(root_cert), CERT_MODE)

    pin_query = (
        f"?pin-source=file:{options.passphrase_file.absolute()}"
        if options.passphrase_file is not None
        else ""
    )
    if options.intermediate_key_uri:
        key_uri = options.intermediate_key_uri
        intermediate_key = generate_key(key_uri, options.key_type)
    else:
        key_uri = f"file:private/intermediate.key.pem{pin_query}"
        intermediate_key = options.key_type.generate()
        write_private_key(folder.intermediate_key_path, intermediate_key, passphrase)
    intermediate_cert = _ca_certificate(
        _name(options.intermediate_cn, options),
        intermediate_key,
        root_name,
        root_key,
        INTERMEDIATE_DAYS,
        0,
    )
    _write_file(folder.intermediate_cert_path, _pem(intermediate_cert), CERT_MODE)
    _write_file(folder.chain_path, _pem(intermediate_cert) + _pem(root_cert), CERT_MODE)

    for base, cnf in (
        (folder.root, root_openssl_cnf),
        (folder.intermediate, intermediate_openssl_cnf),
    ):
        _write_file(base / "openssl.cnf", cnf(folder.root), 0o644)
        _write_file(base / "index.txt", "", 0o644)
        _write_file(base / "index.txt.attr", "unique_subject = no\n", 0o644)
        _write_file(base / "serial", "1000\n", 0o644)
    _write_file(folder.intermediate / "crlnumber", "1000\n", 0o644)
    _write_file(folder.profiles_path, default_profiles_toml(options.base_url), 0o644)
    _write_file(
        folder.settings_path,
        "# casign settings of this CA. The key is named by URI (file: or pkcs11:);\n"
        "# a PIN or passphrase is only ever named here by pin-source, never written.\n"
        f'intermediate_key = "{key_uri}"\n',
        0o644,
    )
    return folder
