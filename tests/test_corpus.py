"""Every hostile request in tests/corpus/ goes through the whole signer on a real Redis:
refused with its stable code, nothing signed or reserved, and its batch-mates still issued."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from core.errors import RefusalCode
from store.results import ResultsStore
from tests.csrs import job, make_csr
from worker.authority import SigningAuthority
from worker.issuance import BatchSigner
from worker.profiles import Profile, ProfileSet

# cryptography warns about over-long attribute values it meets in hostile CSRs.
pytestmark = pytest.mark.filterwarnings("ignore:Attribute.s length must be:UserWarning")

CORPUS = Path(__file__).parent / "corpus"
MANIFEST = tomllib.loads((CORPUS / "MANIFEST.toml").read_text(encoding="utf-8"))
ENTRIES: list[dict[str, Any]] = MANIFEST["entry"]


def corpus_profiles(defaults: ProfileSet) -> ProfileSet:
    """The CA's profiles plus the manifest's own (e.g. one that refuses wildcards)."""
    profiles = {name: profile for name in defaults.names if (profile := defaults.get(name))}
    for name, table in MANIFEST.get("profiles", {}).items():
        profiles[name] = Profile.model_validate({"name": name, **table})
    return ProfileSet(profiles)


@pytest.fixture
def corpus_signer(authority: SigningAuthority, store: ResultsStore) -> BatchSigner:
    # A copy of the session authority with more profiles; its own extension cache.
    extended = dataclasses.replace(
        authority, profiles=corpus_profiles(authority.profiles), _extensions={}
    )
    return BatchSigner(extended, store)


def read_csr(entry: dict[str, Any], key: str = "csr") -> str:
    return (CORPUS / entry[key]).read_bytes().decode(entry.get("encoding", "utf-8"))


def raw_job(entry: dict[str, Any]) -> dict[str, Any]:
    """The job exactly as a hostile producer would put it on the queue."""
    if "job" in entry:
        raw: dict[str, Any] = json.loads((CORPUS / entry["job"]).read_text(encoding="utf-8"))
    else:
        raw = {"job_id": entry.get("job_id", entry["name"]), "csr_pem": read_csr(entry)}
        raw["profile"] = entry["profile"]
        for field in ("days", "san"):
            if field in entry:
                raw[field] = entry[field]
    if "inflate" in entry:
        inflate = entry["inflate"]
        raw[inflate["field"]] = "A" * inflate["size"]
    return raw


def test_the_corpus_is_big_enough_and_every_file_is_listed() -> None:
    assert len(ENTRIES) >= 40
    listed = {entry[key] for entry in ENTRIES for key in ("csr", "job", "prior") if key in entry}
    on_disk = {
        path.relative_to(CORPUS).as_posix()
        for folder in ("csr", "jobs")
        for path in (CORPUS / folder).iterdir()
    }
    assert listed == on_disk
    assert len({entry["name"] for entry in ENTRIES}) == len(ENTRIES)
    for entry in ENTRIES:
        RefusalCode(entry["expect"])  # a code that exists


# The refusals a request can earn on its own content (auth.* codes belong to the producer).
REQUEST_FAMILIES = ("csr.", "key.", "subject.", "san.", "request.")


def test_every_request_refusal_code_is_in_the_corpus() -> None:
    covered = {entry["expect"] for entry in ENTRIES}
    assert covered == {code.value for code in RefusalCode if code.startswith(REQUEST_FAMILIES)}


@pytest.mark.parametrize("entry", ENTRIES, ids=[entry["name"] for entry in ENTRIES])
def test_a_hostile_request_is_refused_and_its_batch_survives(
    entry: dict[str, Any], corpus_signer: BatchSigner, store: ResultsStore
) -> None:
    raw = raw_job(entry)
    job_id = raw["job_id"]
    baseline = 0
    if "prior" in entry:
        (prior,) = corpus_signer.sign_batch([job(job_id, read_csr(entry, "prior"))])
        assert prior.status == "issued", prior.message
        baseline = 1

    (result,) = corpus_signer.sign_batch([raw])
    assert (result.job_id, result.status, result.code) == (job_id, "refused", entry["expect"]), (
        result.message
    )
    assert result.message
    assert result.certificate_pem is None and result.serial is None
    assert store.count_issued() == baseline
    assert store.count_serials() == baseline

    # The same hostile job again, between two good ones: it cannot sink its neighbours.
    before = job("good-before", make_csr("before.example.com"))
    after = job("good-after", make_csr("after.example.com"))
    first, again, last = corpus_signer.sign_batch([before, raw_job(entry), after], reply_to="r")
    assert (again.status, again.code) == ("refused", entry["expect"])
    for good in (first, last):
        assert good.status == "issued", good.message
        assert good.certificate_pem is not None
        x509.load_pem_x509_certificate(good.certificate_pem.encode())
    assert store.count_issued() == baseline + 2
    assert store.count_serials() == baseline + 2
    assert not store.pending_records()
    replies = {reply.job_id: reply for reply in store.wait_replies("r", timeout=1)}
    assert replies[job_id].code == entry["expect"]
    assert {replies["good-before"].status, replies["good-after"].status} == {"issued"}
