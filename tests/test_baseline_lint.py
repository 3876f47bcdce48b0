"""The tls_server profile checked by pkilint's CA/Browser Forum TLS Baseline Requirements linter."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509

from core.keys import KeyType
from store.results import ResultsStore
from tests.csrs import job, make_csr
from worker.authority import load_authority
from worker.cafolder import CAOptions, init_ca
from worker.issuance import BatchSigner

LINTER = shutil.which("lint_cabf_serverauth_cert")
pytestmark = pytest.mark.skipif(LINTER is None, reason="pkilint is not installed")


@pytest.mark.parametrize("key_type", [KeyType.RSA2048, KeyType.P256])
def test_tls_server_certificates_pass_the_baseline_linter(
    store: ResultsStore, tmp_path: Path, key_type: KeyType
) -> None:
    folder = init_ca(
        tmp_path / "ca", CAOptions(key_type=key_type, base_url="http://pki.example.com")
    )
    signer = BatchSigner(load_authority(folder.root), store)
    csr = make_csr("www.example.com", san=[x509.DNSName("www.example.com")])
    (result,) = signer.sign_batch([job("lint-1", csr, "tls_server")])
    assert result.ok and result.certificate_pem, result.message
    path = tmp_path / "leaf.pem"
    path.write_text(result.certificate_pem)
    assert LINTER is not None
    linted = subprocess.run(
        [LINTER, "lint", "-t", "DV-FINAL-CERTIFICATE", "-s", "ERROR", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert linted.returncode == 0, linted.stdout + linted.stderr
    assert "ERROR" not in linted.stdout and "FATAL" not in linted.stdout


def test_without_a_base_url_the_profile_says_where_to_name_the_locations() -> None:
    from worker.profiles import default_profiles_toml

    assert "# crl_distribution_points" in default_profiles_toml()
    text = default_profiles_toml("http://pki.example.com/")
    assert 'ocsp_urls = ["http://pki.example.com/ocsp"]' in text
