# casign: one image for the signer and for producers (docker-compose.yml picks the command).
FROM python:3.11-slim-bookworm
RUN apt-get update \
    && apt-get install -y --no-install-recommends softhsm2 opensc openssl \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY casign casign
COPY core core
COPY store store
COPY ocsp ocsp
COPY est est
COPY keystore keystore
COPY worker worker
COPY producers producers
COPY softhsm softhsm
RUN pip install --no-cache-dir . \
    && useradd --system --create-home --home-dir /var/lib/casign casign \
    && install -d -o casign -m 0755 /acl \
    && install -d -o casign -m 0700 /run/casign/producers/www \
    && install -d -o casign -m 0755 /out
# The compose volumes mounted at /acl, /run/casign/producers/www and /out start as these folders,
# the casign user's: the set-up writes Redis's ACL file and the producer's secrets there, and
# the producer its key, CSR and certificate in /out.
USER casign
WORKDIR /var/lib/casign
CMD ["casign", "--help"]
