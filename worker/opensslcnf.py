"""The guide's `openssl.cnf` files, so `openssl ca` keeps working on a casign CA folder."""

from __future__ import annotations

from pathlib import Path

_TEMPLATE = """\
# OpenSSL {role} CA configuration file, as in the OpenSSL CA guide.
# Written by `casign init`; `openssl ca -config {cnf}` works on this folder.

[ ca ]
default_ca = CA_default

[ CA_default ]
dir               = {dir}
certs             = $dir/certs
crl_dir           = $dir/crl
new_certs_dir     = $dir/newcerts
database          = $dir/index.txt
serial            = $dir/serial
RANDFILE          = $dir/private/.rand

private_key       = $dir/private/{key_name}.key.pem
certificate       = $dir/certs/{key_name}.cert.pem

crlnumber         = $dir/crlnumber
crl               = $dir/crl/{key_name}.crl.pem
crl_extensions    = crl_ext
default_crl_days  = 30

default_md        = sha256

name_opt          = ca_default
cert_opt          = ca_default
default_days      = {default_days}
preserve          = no
policy            = {policy}

[ policy_strict ]
countryName             = match
stateOrProvinceName     = match
organizationName        = match
organizationalUnitName  = optional
commonName              = supplied
emailAddress            = optional

[ policy_loose ]
countryName             = optional
stateOrProvinceName     = optional
localityName            = optional
organizationName        = optional
organizationalUnitName  = optional
commonName              = supplied
emailAddress            = optional

[ req ]
default_bits        = 2048
distinguished_name  = req_distinguished_name
string_mask         = utf8only
default_md          = sha256
x509_extensions     = v3_ca

[ req_distinguished_name ]
countryName                     = Country Name (2 letter code)
stateOrProvinceName             = State or Province Name
localityName                    = Locality Name
0.organizationName              = Organization Name
organizationalUnitName          = Organizational Unit Name
commonName                      = Common Name
emailAddress                    = Email Address

[ v3_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical, CA:true
keyUsage = critical, digitalSignature, cRLSign, keyCertSign

[ v3_intermediate_ca ]
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always,issuer
basicConstraints = critical, CA:true, pathlen:0
keyUsage = critical, digitalSignature, cRLSign, keyCertSign

[ usr_cert ]
basicConstraints = CA:FALSE
nsCertType = client, email
nsComment = "OpenSSL Generated Client Certificate"
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
keyUsage = critical, nonRepudiation, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth, emailProtection

[ server_cert ]
basicConstraints = CA:FALSE
nsCertType = server
nsComment = "OpenSSL Generated Server Certificate"
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer:always
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth

[ crl_ext ]
authorityKeyIdentifier=keyid:always

[ ocsp ]
basicConstraints = CA:FALSE
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid,issuer
keyUsage = critical, digitalSignature
extendedKeyUsage = critical, OCSPSigning
"""


def root_openssl_cnf(ca_dir: Path) -> str:
    """The guide's root `openssl.cnf` (policy_strict, 7300-day CA certificates)."""
    return _TEMPLATE.format(
        role="root",
        cnf=ca_dir / "openssl.cnf",
        dir=ca_dir,
        key_name="ca",
        default_days=375,
        policy="policy_strict",
    )


def intermediate_openssl_cnf(ca_dir: Path) -> str:
    """The guide's `intermediate/openssl.cnf` (policy_loose, 375-day leaves)."""
    intermediate = ca_dir / "intermediate"
    return _TEMPLATE.format(
        role="intermediate",
        cnf=intermediate / "openssl.cnf",
        dir=intermediate,
        key_name="intermediate",
        default_days=375,
        policy="policy_loose",
    )
