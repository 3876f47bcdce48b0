"""The benchmark of issue 4: casign against its own signing limit, `openssl ca` and cfssl.

`python -m bench --help` runs it; every row signs the same CSRs, made before any timing.
"""
