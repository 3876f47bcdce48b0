"""The guide's CA folder on disk: making a new one, and reading one back."""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from core.auth import key_identity
from core.errors import ConfigurationError
from core.files import write_file_atomically
from core.keys import write_private_key
from core.layout import ca_folder_problem
from core.queue import QueueNames, ca_tag, names_for_ca
from core.secret_source import read_secret_file
from keystore import KeyType, SigningKey, generate_key, parse_key_uri
from worker.opensslcnf import intermediate_openssl_cnf, root_openssl_cnf
from worker.profiles import default_profiles_toml
from worker.record_key import RECORD_KEY_NAME, RecordKey, load_record_key, make_record_key
from worker.retention import DEFAULT_JOB_RETENTION_DAYS

ROOT_DAYS = 7300
INTERMEDIATE_DAYS = 3650
CERT_MODE = 0o444
SETTINGS_NAME = "casign.toml"
DEFAULT_INTERMEDIATE_CN = "casign Intermediate CA"


@dataclass(frozen=True)
class CAOptions:
    """What `casign init` asks for; defaults are the guide's."""

    root_cn: str = "casign Root CA"
    # None: "casign Intermediate CA" and the CA's tag (core.queue.ca_tag), so that two CAs made
    # with the defaults never share a name.
    intermediate_cn: str | None = None
    organization: str | None = None
    country: str | None = None
    key_type: KeyType = KeyType.RSA4096
    passphrase_file: Path | None = None  # the intermediate's (and the root's, unless below)
    root_passphrase_file: Path | None = None  # read once, written nowhere
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
    def record_key_path(self) -> Path:
        """The signers' record MAC key (`worker/record_key.py`), beside the intermediate key."""
        return self.intermediate / "private" / RECORD_KEY_NAME

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
        problem = ca_folder_problem(self.root)
        if problem is not None:
            raise ConfigurationError(
                problem.sentence(f"make one with `casign init {self.root}`, or give --ca another")
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

    def record_key(self) -> RecordKey:
        """The record MAC key, made on first use in a folder made before records were sealed."""
        return load_record_key(self.record_key_path, make_if_absent=True)

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
    """Make a new root and intermediate pair in the guide's layout, all or nothing.

    Everything, the token key included, is made in a staging folder beside `directory` and
    moved into place only once complete; on any failure the staging folder is removed, so
    nothing is left and the same command can simply be run again.
    """
    target = CAFolder(directory)
    _refuse_existing_ca(target)
    passphrase = _read_passphrase(options.passphrase_file)
    root_passphrase = _read_passphrase(options.root_passphrase_file, "root ") or passphrase
    if options.root_passphrase_file is not None and root_passphrase == passphrase:
        raise ConfigurationError(
            f"{options.root_passphrase_file}: the root passphrase is the intermediate's; give "
            "the root a passphrase of its own"
        )
    key_uri = (
        _stored_key_uri(options.intermediate_key_uri) if options.intermediate_key_uri else None
    )
    target.root.parent.mkdir(parents=True, exist_ok=True)
    staging = target.root.with_name(f".{target.root.name}.casign-init-{secrets.token_hex(4)}")
    staging.mkdir(mode=0o777)  # the umask decides, as for a folder made by hand
    token_key_made = False
    try:
        work = CAFolder(staging)
        _make_folders(work)
        root_key = options.key_type.generate()
        write_private_key(work.root_key_path, root_key, root_passphrase)
        root_name = _name(options.root_cn, options)
        root_cert = _ca_certificate(root_name, root_key, root_name, root_key, ROOT_DAYS, None)
        _write_file(work.root_cert_path, _pem(root_cert), CERT_MODE)

        if key_uri is not None:
            intermediate_key = _generate_token_key(key_uri, options.key_type)
            token_key_made = True
        else:
            pin_query = (
                f"?pin-source=file:{options.passphrase_file.absolute()}"
                if options.passphrase_file is not None
                else ""
            )
            key_uri = f"file:private/intermediate.key.pem{pin_query}"
            intermediate_key = options.key_type.generate()
            write_private_key(work.intermediate_key_path, intermediate_key, passphrase)
        identity = key_identity(intermediate_key.public_key())
        intermediate_cn = options.intermediate_cn or f"{DEFAULT_INTERMEDIATE_CN} {ca_tag(identity)}"
        intermediate_cert = _ca_certificate(
            _name(intermediate_cn, options),
            intermediate_key,
            root_name,
            root_key,
            INTERMEDIATE_DAYS,
            0,
        )
        _write_file(work.intermediate_cert_path, _pem(intermediate_cert), CERT_MODE)
        _write_file(work.chain_path, _pem(intermediate_cert) + _pem(root_cert), CERT_MODE)
        make_record_key(work.record_key_path)
        _write_configuration(work, target, options, key_uri, names_for_ca(identity))
        _move_into_place(staging, target.root)
    except Exception as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if token_key_made and options.intermediate_key_uri:
            raise ConfigurationError(
                f"{exc}; nothing was written, but the token now holds the new key of "
                f"{options.intermediate_key_uri}: delete it (pkcs11-tool --delete-object) or "
                "name another object= before trying again"
            ) from exc
        raise
    except BaseException:  # Ctrl-C: leave nothing half-made either
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _refuse_existing_ca(folder: CAFolder) -> None:
    if folder.exists():
        raise ConfigurationError(
            f"{folder.root} already holds a CA ({folder.intermediate_cert_path} exists); "
            "refusing to overwrite it"
        )
    for existing in (folder.root_key_path, folder.root_cert_path, folder.intermediate):
        if existing.exists():
            raise ConfigurationError(
                f"{folder.root} already holds a CA or part of one ({existing} exists); refusing "
                f"to overwrite it (a half-made CA left by an older casign may be removed)"
            )
    if folder.root.exists() and not folder.root.is_dir():
        raise ConfigurationError(f"{folder.root} is a file; give a new or empty folder")


def _read_passphrase(passphrase_file: Path | None, whose: str = "") -> str | None:
    """The passphrase in a file private to its owner; an empty or shared file is refused."""
    if passphrase_file is None:
        return None
    return read_secret_file(passphrase_file, f"{whose}passphrase")


def _stored_key_uri(text: str) -> str:
    """The key URI as `casign.toml` keeps it: checked now, a relative pin-source file made absolute.

    A worker reads the PIN from its own working folder, so `file:hsm/user-pin` is resolved here,
    where the operator typed it.
    """
    parsed = parse_key_uri(text)  # refuses pin-value and a pin-source that is no source
    source = parsed.pin_source
    if source is None or not source.startswith("file:") or Path(source[5:]).is_absolute():
        return text
    body, _, query = text.partition("?")
    items = [
        f"pin-source=file:{quote(str(Path(source[5:]).absolute()), safe='/')}"
        if unquote(item.partition("=")[0]) == "pin-source"
        else item
        for item in query.split("&")
    ]
    return f"{body}?{'&'.join(items)}"


def _generate_token_key(key_uri: str, key_type: KeyType) -> SigningKey:
    """The intermediate key, made inside the token; a failure says what to fix."""
    try:
        return generate_key(key_uri, key_type)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{exc}{_token_hint(str(exc), key_uri)}") from exc


def _token_hint(message: str, key_uri: str) -> str:
    """What an operator following the README most likely has to change after `message`."""
    if "already holds an object" in message:
        return (
            "; for `casign init` to make the key, make the token empty with "
            "`softhsm/make-token.sh DIR LABEL OBJECT none`, or name another object= in the URI"
        )
    parsed = parse_key_uri(key_uri)
    module = parsed.query.get("module-path") or os.environ.get(
        "CASIGN_PKCS11_MODULE", "libsofthsm2.so"
    )
    if "softhsm" not in module.lower():
        return ""
    conf = os.environ.get("SOFTHSM2_CONF")
    if conf is None:
        return (
            "; SOFTHSM2_CONF is not set, so SoftHSM looked in its default token folder: "
            "export SOFTHSM2_CONF=DIR/softhsm2.conf as softhsm/make-token.sh printed"
        )
    return f" (SoftHSM read its tokens from SOFTHSM2_CONF={conf})"


def _make_folders(folder: CAFolder) -> None:
    for sub in ("certs", "crl", "newcerts", "private"):
        (folder.root / sub).mkdir(exist_ok=True)
        (folder.intermediate / sub).mkdir(parents=True, exist_ok=True)
    (folder.intermediate / "csr").mkdir()
    os.chmod(folder.root / "private", 0o700)
    os.chmod(folder.intermediate / "private", 0o700)


def _write_configuration(
    work: CAFolder, target: CAFolder, options: CAOptions, key_uri: str, names: QueueNames
) -> None:
    """openssl.cnf, the CA databases, profiles and settings, written in `work` for `target`."""
    for base, cnf in (
        (work.root, root_openssl_cnf),
        (work.intermediate, intermediate_openssl_cnf),
    ):
        _write_file(base / "openssl.cnf", cnf(target.root), 0o644)
        _write_file(base / "index.txt", "", 0o644)
        _write_file(base / "index.txt.attr", "unique_subject = no\n", 0o644)
        _write_file(base / "serial", "1000\n", 0o644)
    _write_file(work.intermediate / "crlnumber", "1000\n", 0o644)
    _write_file(work.profiles_path, default_profiles_toml(options.base_url), 0o644)
    _write_file(
        work.settings_path,
        "# casign settings of this CA. The key is named by URI (file: or pkcs11:);\n"
        "# a PIN or passphrase is only ever named here by pin-source, never written.\n"
        f'intermediate_key = "{key_uri}"\n'
        "# nextUpdate of each CRL, in days: at most 10 (BR 4.9.7)\n"
        "crl_days = 7\n"
        "# crl_shards = 4  # partitioned CRLs: see README (profiles then name {shard})\n"
        "# This CA's signing queue and key prefix, made from its key: no other CA shares them\n"
        "# (CASIGN_QUEUE / CASIGN_STORE_PREFIX override them for one command).\n"
        f'queue = "{names.queue}"\n'
        f'store_prefix = "{names.store_prefix}"\n'
        "# Days a job record (what answers a job id sent again) is kept once closed; 0: for\n"
        "# ever. Certificates, the index and the audit log are always kept.\n"
        f"job_retention_days = {DEFAULT_JOB_RETENTION_DAYS}\n",
        0o644,
    )


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename the finished CA to `target`; into an existing folder entry by entry, or not at all."""
    try:
        os.rename(staging, target)  # `target` absent, or an empty folder
        return
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    entries = sorted(staging.iterdir())
    for entry in entries:
        if os.path.lexists(target / entry.name):
            raise ConfigurationError(
                f"{target} already holds {entry.name}; give a new or empty folder"
            )
    moved: list[str] = []
    try:
        for entry in entries:
            os.rename(entry, target / entry.name)
            moved.append(entry.name)
    except BaseException:
        for name in moved:
            os.rename(target / name, staging / name)
        raise
    staging.rmdir()
