"""What `casign status` says of a job: issued, refused, signing, queued (and behind what) or unknown."""

from __future__ import annotations

from casign.queue_view import QueueView, worker_activity, worker_busy
from store.airgap import AirgapRecords
from store.results import ResultsStore


def describe_jobs(
    store: ResultsStore, view: QueueView, job_ids: list[str], start_worker: str
) -> dict[str, tuple[str, bool]]:
    """Each job's state as a sentence, and whether anything knows of it at all."""
    finished = store.job_results(job_ids)
    states: dict[str, tuple[str, bool]] = {}
    unrecorded: list[str] = []
    for job_id in job_ids:
        result = finished.get(job_id)
        if result is not None and result.ok:
            states[job_id] = (f"issued, serial {result.serial}", True)
        elif result is not None:
            states[job_id] = (f"refused [{result.code}] {result.message}", True)
        elif state := store.job_state(job_id):
            serial = state.get("serial")
            states[job_id] = (f"signing (serial {serial} reserved)", True)
        else:
            unrecorded.append(job_id)
    exported = AirgapRecords(store).exported_jobs(unrecorded)
    for job_id in exported:
        states[job_id] = ("exported, waiting for the signer (casign airgap)", True)
    unrecorded = [job_id for job_id in unrecorded if job_id not in exported]
    if not unrecorded:
        return states
    places = view.locate(unrecorded)
    last_active = store.workers_last_active()
    activity = worker_activity(last_active, view.ca_queue)
    advice = "" if worker_busy(last_active, view.ca_queue) else f"; start one with: {start_worker}"
    depth = ""
    if places is None and (count := view.depth()) is not None:
        depth = f"; queue {view.queue!r} holds {count} message(s)"
    for job_id in unrecorded:
        place = None if places is None else places.get(job_id)
        if places is None:
            states[job_id] = (
                "not recorded by any worker: queued, or never submitted (the queue cannot be "
                f"searched: {view.unsearchable}){depth}; {activity}",
                False,
            )
        elif place is None:
            states[job_id] = (
                f"unknown: no worker has recorded it and queue {view.queue!r} does not hold it "
                "(never submitted, sent to another queue or store, or refused before it was "
                "recorded, as auth.* refusals are)",
                False,
            )
        elif place.taken:
            states[job_id] = (
                "queued: a worker has taken it and signs it after the batch in hand",
                True,
            )
        else:
            states[job_id] = (
                f"queued in {view.queue!r} with {place.jobs_ahead} job(s) in "
                f"{place.messages_ahead} message(s) ahead of it; {activity}{advice}",
                True,
            )
    return states
