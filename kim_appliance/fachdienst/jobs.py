"""Jobs that run once per cluster, not once per node: retention, purge and KAS expiry.

Every node of a cluster runs the same periodic tasks; before a pass a task takes the job's
lease in the store (``store.nodes.acquire``) for its node, for one interval plus
:data:`JOB_LEASE_SLACK`. The node that holds it runs the pass and extends the lease at its next
pass; the others skip theirs while it lasts. When the holder dies its lease lapses one slack
after its next pass would have been due, and the first node to try then takes the job over.
With the embedded store (one process) the lease is always this node's. This module decides
only who runs a pass; it never runs one.
"""

from __future__ import annotations

import datetime as dt

from kim_appliance.fachdienst.context import Fachdienst
from kim_appliance.store import StoreError

#: a job's lease lasts one interval and this much longer: a holder whose pass and sleep run
#: late by less than this keeps the job
JOB_LEASE_SLACK = dt.timedelta(seconds=60)


async def take_turn(fd: Fachdienst, job: str, interval_seconds: float) -> bool:
    """True if this node runs the next pass of ``job`` of ``fd``'s domain (it holds the lease
    now); False while another node's lease runs, or when the store cannot say (the pass is
    skipped and tried at the next interval)."""
    lease = f"{job}:{fd.domain}"
    ttl = dt.timedelta(seconds=interval_seconds) + JOB_LEASE_SLACK
    try:
        return await fd.store.nodes.acquire(lease, fd.node, dt.datetime.now(dt.UTC), ttl)
    except StoreError as exc:
        fd.log.warning("%s: cannot take the %s lease: %s", fd.domain, job, exc)
        return False
