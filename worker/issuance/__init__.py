"""Issuance as numbered steps, in the order Boulder's `ca.go` keeps (modules: `steps.py`).

1. authenticate  the batch's HMAC names a listed producer (`worker/access.py`), or the signer is open
2. admit         each job's message and CSR parsed once, the CSR policy (`worker/policy.py`), the
                 producer's profiles, names and rate
3. fix_record    serial drawn, validity fixed (backdated, within the CA's): the `IssuanceRecord`
4. build_tbs     the to-be-signed certificate, a pure function of the record and the CA; its
                 subject built from the checked values (`worker/subject.py`)
5. lint          the TBS signed with a throwaway key like the CA's and run through the profile's
                 pkilint linter (`worker/lint.py`); an error refuses it (`lint.failed`)
6. reserve       the record sealed (the signers' MAC, its profile by name and hash) and stored
                 under its job id and serial before anything is signed; a job an earlier delivery
                 reserved is signed from its stored record, byte for byte, once its MAC verifies
                 and its profile is still the CA's (else refused and closed)
7. sign          the key backend signs the TBS
8. verify        the signature chains to the intermediate and the certificate is its record
9. publish       certificates, index lines, replies, refusals and audit lines, one atomic call

`batch.py` runs them over a batch (`BatchSigner`), `recovery.py` runs 7-9 over the records a
crashed worker left reserved (after their MAC, their profile and admission again),
`failures.py` closes the jobs that failed.

A job refused in steps 1-6 gets a stable code. A job that raises in step 7 or 8 (an
IssuanceFault, a token refusing a mechanism, any error of the key other than Retryable) fails
alone: the rest of its batch is signed and published, and its reservation is first marked
`failed` in the store (out of the pending set, record dropped, serial kept), then it is
answered `failed` (`internal.error`): recovery never issues it, and a later delivery of the
same job gets the same answer. A Retryable (store or HSM unavailable) ends the batch unpublished,
to be delivered again.
"""

from worker.issuance.batch import BatchSigner
from worker.issuance.record import Applicant, IssuanceRecord, draw_serial

__all__ = ["Applicant", "BatchSigner", "IssuanceRecord", "draw_serial"]
