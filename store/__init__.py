"""The store: every Redis key casign uses, and the embedded Redis of a CA folder.

`store.keys` lists the keys and is the only place that names them; `store/lua/*.lua` are the
scripts that change several at once (loaded by `store.scripts`); `store.results.ResultsStore`
is the object every role opens, with one part per concern (jobs, index, replies, audit, chain,
CRLs, rate limits, locks, health); `store.revocations.RevocationStore` revokes. Nothing outside
this package builds a key or calls the Redis client.
"""
