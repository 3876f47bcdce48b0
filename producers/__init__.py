"""Enqueue CSR jobs for the casign signer and collect the certificates."""

from core.messages import JobResult, SignRequest
from producers.producer import Producer

__all__ = ["JobResult", "Producer", "SignRequest"]
