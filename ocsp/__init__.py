"""The OCSP responder (RFC 6960): answers from the store with the delegate key, never the CA's."""
