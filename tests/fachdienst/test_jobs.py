"""Cluster-wide jobs (issue 12 §3): retention, purge and KAS expiry run on one node of the
cluster at a time, the holder of the job's lease in the store."""

from __future__ import annotations

import datetime as dt

from fd_support import fachdienst_on

from kim_appliance.fachdienst.jobs import JOB_LEASE_SLACK, take_turn
from kim_appliance.store import Store

FD1, FD2 = "fd1.kim.telematik-test", "fd2.kim.telematik-test"


async def test_one_node_runs_a_job_until_its_lease_lapses(kim_store: Store) -> None:
    """Two nodes' Fachdienste of one domain on one store: the first to ask runs the retention
    pass and keeps the job at its next pass; the other skips while that lease runs, and takes
    the job once it lapsed (the holder died). Another domain's job is separate."""
    a = fachdienst_on(kim_store, FD1, node="a")
    b = fachdienst_on(kim_store, FD1, node="b")
    b2 = fachdienst_on(kim_store, FD2, node="b")
    assert await take_turn(a, "retention", 3600)
    assert not await take_turn(b, "retention", 3600)
    assert await take_turn(a, "retention", 3600)  # the holder extends it
    assert await take_turn(b2, "retention", 3600)
    assert await take_turn(b, "kas-expiry", 3600)  # another job, another lease
    # a lapses: b's turn comes one interval and the slack after a's last pass
    lapsed = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=3600) + JOB_LEASE_SLACK
    ttl = dt.timedelta(seconds=3600) + JOB_LEASE_SLACK
    assert await kim_store.nodes.acquire(f"retention:{FD1}", "b", lapsed, ttl)
    assert not await take_turn(a, "retention", 3600)
