"""Garbage collection per project: what no remaining image needs leaves metadata and storage.

A run goes through three steps (docs/architecture.md, "Garbage collection"):

1. **Restrict.** `project_settings.gc_restricted_by` is set to the run, so pushes, new tags and
   repository changes in the project are refused (`restrictions.py`); pulls go on.
2. **Decide and delete, in one transaction.** With delete-untagged, the images nothing keeps
   (no tag, pushed before the grace period, not a child, referrer or subject of a kept image);
   then the project's repository blob links that no manifest of their repository references
   and that are older than the grace period; uploads untouched for `upload_expiry` (not the
   grace period). The same transaction lifts the restriction, so the restricted window is
   just this step, and a crash leaves all of it done or none of it.
3. **Sweep**, with writes allowed again. The blobs that lost a link, and any blob no
   repository links that is older than the grace period, are listed in `gc_sweep`; batch by
   batch, the rows of those that no repository links by then are deleted (each noted in
   `blob_removals`), and once that has committed their files are removed: no request to the
   store is made while a row is locked. That conditional delete is the compare-and-set against
   a concurrent push of the same digest: a push that linked the blob first keeps row and file;
   a push after it waits until the file is removed, then stores it again
   (`services/uploads/commits.py`). Upload scratch files go the same way (`sweep.py`).

One run per project at a time. A run holds a lease (`job_leases`, `gc:{project id}`) that it
renews while it works; a run whose lease lapsed, or whose holder process on this machine is
gone, is recovered by any server process: before step 2 committed, it is rolled back (the
restriction lifted, nothing changed); after, its sweep is finished (`recovery.py`, on the lease
protocol of `jobs/leases.py`).

Removals from the store are fenced by the lease. The heartbeat notices a lost lease only every
5 s; so right before each batch's removal, one conditional UPDATE confirms that this process
still holds the lease with `FENCE_MARGIN_SECONDS` (10 s) left and renews it to `LEASE_SECONDS`
(30 s), or the run stops there (its notes stay for whoever holds the run). The removal is not
bounded in time: the heartbeat keeps renewing the lease meanwhile, so the run stays running and
pushes of those blobs wait however slow the store (a run failed on a timeout would free them
while a request already sent could still land). What that guarantees: no other process takes
the run over, finishes it and sees a push store the blob again while this one is alive and
renewing. What remains: a process paused for longer than the lease (30 s) between the check
and its request reaching the store (stopped, swapped out, a request held in the network) can
still remove such a new object,
leaving a row without an object (the storage check reports it, a push repairs it). The real
fix, an object key per blob row so that no late removal can reach a newer object, is not built.

The modules: `collector.py` starts and carries out runs; `runs.py` is a run's record (`Run`, what
the API and the CLI show) and its state machine; `reachability.py` the rules of what may go, as a
pure function; `decide.py` step 2; `sweep.py` step 3; `recovery.py` leases and recovery;
`restrictions.py` the write restriction every content write checks.
"""

from berth.services.gc.collector import GarbageCollector
from berth.services.gc.runs import (
    FAILED,
    ROLLED_BACK,
    RUNNING,
    SUCCEEDED,
    GcAlreadyRunning,
    GcRunUnknown,
    Run,
)

__all__ = [
    "FAILED",
    "ROLLED_BACK",
    "RUNNING",
    "SUCCEEDED",
    "GarbageCollector",
    "GcAlreadyRunning",
    "GcRunUnknown",
    "Run",
]
