"""Every Redis key casign uses, and the one place that builds them.

Each key sits under a prefix (written `P:` here): the CA folder's `store_prefix` in casign.toml
(`casign-TAG`, `core.queue.names_for_ca`; `casign` for a folder made before), or CASIGN_STORE_PREFIX.
The Lua scripts in `store/lua/` are handed their keys from this module: each key by name
(KEYS[...]), and for the job keys of a batch the stem `P:job:` (`KeySpace.job_stem`) to which
they append each job id, so a batch's ids travel once. This list is the whole schema.

Jobs and records (`store.jobs`):
  P:job:{id}          hash: state (reserved|issued|refused|failed), fingerprint, serial, record
                      (sealed by a signer, `worker/issuance/record.py`; until published, failed
                      or refused), holder (of a reserved job: the id of the worker process whose
                      lease covers it, `store.leases`), code, message (of a refusal or failure),
                      owner (of an issued job: the requester it was issued to, who may revoke it);
                      once closed (issued, refused, failed) it expires after the CA's
                      `job_retention_days`
  P:serials           hash: serial hex -> job id, or `adopted` (HSETNX: a serial is never drawn twice)
  P:pending           set of job ids reserved but not yet published (what recovery signs)
  P:owners            hash: serial hex -> who obtained it (kept when its job record expires)
  P:inhand            sorted set: job id -> unix time a signing process began the message that
                      carries it, until that task ends (a job in a worker's hands before its
                      record is written); entries older than twice the visibility timeout go
  P:reply:{name}      list of result JSON (sign and revocation) a producer waits on; at most
                      REPLY_LIST_MAX long (oldest dropped), expires a fixed time after it is made
Certificates, index and revocations (`store.index`, `RevocationStore(store)`):
  P:certs             hash: serial hex -> certificate PEM
  P:index             hash: serial hex -> index.txt line
  P:index:order       list of serial hex in issuance order (export keeps the order)
  P:revoked           hash: serial hex -> index line, the revoked subset of `index`
  P:revocation:{id}   string: serial a revocation request revoked (a redelivery is answered once)
  P:adopted           hash: folder, at of the `openssl ca` folder adopted into this store
  P:instance          string: a random id of this key space, made once (SET NX): the CA folder
                      whose index.txt the worker keeps in step names it (`worker/folder_sync.py`)
The audit log (`store.audit`, appended by `lua/audit.lua` only):
  P:audit             list of `HASH JSON` entries, each chained to the one before (core.audit)
  P:audit:head        string: the hash of the newest entry
CRLs (`store.crls`):
  P:crl:number        counter: the last CRL number drawn (INCR, with a snapshot of `revoked` in
                      the same script, lua/crl_draw.lua); one sequence shared by every shard
  P:crl:latest        hash: number, pem, this_update, next_update of the newest CRL published
                      (the only CRL when `crl_shards` is unset in casign.toml)
  P:crl:latest:{k}    hash: the same for shard k (0 <= k < crl_shards) of a partitioned CRL
The CA (`store.ca_chain`):
  P:chain             string: the CA chain PEM handed out with every certificate
Rate limits and locks (`store.rate_limits`, `store.locks`):
  P:rate:{producer}   hash: tokens, at of a producer's token bucket; expires when full again
  P:lock:{name}       string: the holder's token of a lock (`crl-schedule`, held
                      for the CRL interval by the worker process that made its scheduled CRL)
Sealed messages and the CA's identity (`store.envelopes`, `store.identity`):
  P:envelope:{producer}:{nonce}  string: a sealed message done (the replay cache); expires
  P:authfail:{reply}  string: JSON code and message of the last unauthenticated message naming
                      that reply list (no reply is pushed for one); expires after 5 minutes
  P:ca                hash: id (SHA-256 of the intermediate's SubjectPublicKeyInfo), name: the
                      CA this key space belongs to, recorded by its first signer
Workers (`store.workers`) and their leases (`store.leases`):
  P:workers           hash: queue name -> unix time a worker serving it last started or took a batch
  P:lease:{worker}    string: a signing process's lease (its id: host, pid and a start nonce),
                      set with an expiry (PX) that the process renews while it lives; a reserved
                      job whose holder's lease is gone may be taken over (recovery)
Figures (`store.metrics`):
  P:metrics           hash: JSON [sample name, labels] -> value the signers added up (counters and
                      histogram buckets, for `casign metrics` and `casign top`)
OCSP responders' and EST servers' figures (`store.figures_board`):
  P:ocsp:responders   sorted set: responder name (host:port) -> unix time its figures lapse
  P:ocsp:figures:{responder}  string: JSON of one responder's figures (its answer cache, answers
                      served and signed, renewals), set with an expiry (PX) it renews each second
  P:est:servers       sorted set: EST server name (PRODUCER@host:port, or host:port for one not
                      running as a producer, `est.figures`) -> unix time its figures lapse
  P:est:figures:{server}  string: JSON of one EST server's figures (answers by operation and
                      status, refusals by code, enrollments queued), set with an expiry (PX)
The air gap (`store.airgap`): on the online side, what the relay exported and imported
  P:airgap:exported   hash: batch id -> JSON of a batch taken off the queue, until answered
  P:airgap:jobs       hash: job id -> batch id of an exported, unanswered sign job
  P:airgap:bundle:{n} string: JSON of request bundle n (id, time, its batch ids), kept
  P:airgap:sequence   counter: the last request bundle number drawn
  P:airgap:imported   set: ids of results bundles imported
and on the offline side, what the signer answered
  P:airgap:seen       hash: request bundle number -> its bundle id
  P:airgap:answers    hash: batch id -> JSON of its answers, index lines and audit lines
"""

from __future__ import annotations


class KeySpace:
    """The names of casign's keys under one prefix; see the module docstring for what each holds."""

    __slots__ = (
        "adopted",
        "airgap_answers",
        "airgap_exported",
        "airgap_imported",
        "airgap_jobs",
        "airgap_seen",
        "airgap_sequence",
        "audit",
        "audit_head",
        "ca",
        "certs",
        "chain",
        "crl_latest",
        "crl_number",
        "est_figures_stem",
        "est_servers",
        "in_hand",
        "index",
        "index_order",
        "instance",
        "job_stem",
        "lease_stem",
        "metrics",
        "ocsp_figures_stem",
        "ocsp_responders",
        "owners",
        "pending",
        "prefix",
        "revoked",
        "serials",
        "workers",
    )

    def __init__(self, prefix: str = "casign") -> None:
        self.prefix = prefix.rstrip(":") + ":"
        self.job_stem = self.key("job", "")
        self.lease_stem = self.key("lease", "")
        self.serials = self.key("serials")
        self.pending = self.key("pending")
        self.owners = self.key("owners")
        self.in_hand = self.key("inhand")
        self.certs = self.key("certs")
        self.index = self.key("index")
        self.index_order = self.key("index", "order")
        self.revoked = self.key("revoked")
        self.adopted = self.key("adopted")
        self.instance = self.key("instance")
        self.audit = self.key("audit")
        self.audit_head = self.key("audit", "head")
        self.crl_number = self.key("crl", "number")
        self.crl_latest = self.key("crl", "latest")
        self.chain = self.key("chain")
        self.ca = self.key("ca")
        self.workers = self.key("workers")
        self.metrics = self.key("metrics")
        self.ocsp_responders = self.key("ocsp", "responders")
        self.ocsp_figures_stem = self.key("ocsp", "figures", "")
        self.est_servers = self.key("est", "servers")
        self.est_figures_stem = self.key("est", "figures", "")
        self.airgap_exported = self.key("airgap", "exported")
        self.airgap_jobs = self.key("airgap", "jobs")
        self.airgap_sequence = self.key("airgap", "sequence")
        self.airgap_imported = self.key("airgap", "imported")
        self.airgap_seen = self.key("airgap", "seen")
        self.airgap_answers = self.key("airgap", "answers")

    def key(self, *parts: str) -> str:
        """`P:part1:part2...`: the one way a key is spelled."""
        return self.prefix + ":".join(parts)

    def job(self, job_id: str) -> str:
        return self.job_stem + job_id

    def crl_shard_latest(self, shard: int) -> str:
        return self.key("crl", "latest", str(shard))

    def reply(self, name: str) -> str:
        return self.key("reply", name)

    def revocation(self, request_id: str) -> str:
        return self.key("revocation", request_id)

    def rate(self, producer: str) -> str:
        return self.key("rate", producer)

    def lock(self, name: str) -> str:
        return self.key("lock", name)

    def lease(self, worker: str) -> str:
        return self.key("lease", worker)

    def envelope(self, producer: str, nonce: str) -> str:
        return self.key("envelope", producer, nonce)

    def auth_note(self, reply_to: str) -> str:
        return self.key("authfail", reply_to)

    def ocsp_figures(self, responder: str) -> str:
        return self.ocsp_figures_stem + responder

    def est_figures(self, server: str) -> str:
        return self.est_figures_stem + server

    def airgap_bundle(self, sequence: int) -> str:
        return self.key("airgap", "bundle", str(sequence))
