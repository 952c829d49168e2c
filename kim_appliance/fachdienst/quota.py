"""The account quota of a Fachdienst: what counts, and the figures the services report.

digest §3.2 has one quota per account (``quota``/``remainQuota`` in bytes, -1 = unlimited) and
§3.5 lets the KAS answer 507 when an upload does not fit it (KAS-ref checks it against the
Account Manager's ``POST /quota``). The quota covers, per account:

* the messages in its mailbox (what POP3 ``RETR`` sends: trace prefix + body);
* the KAS attachments it uploaded that are still stored (until they expire or are deleted);
* KAS uploads of the account still in flight (reserved at their declared size).

KAS blobs count for the uploader, not for the recipients: the recipients' mailboxes hold only
the small KIM message with the link. The check that two deliveries (or an upload and a
delivery) into the same mailbox do not together overshoot is the store's: ``mail.deliver(...,
check_quota=True)`` and ``kas.reserve`` check and insert in one transaction, also across nodes
(`kim_appliance.store.base`). This module only reads the figures; it never stores a message and
never speaks SMTP or HTTP.
"""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING

from kim_appliance.store import QuotaExceeded as QuotaExceeded  # re-exported
from kim_appliance.store.base import UNLIMITED, Account

if TYPE_CHECKING:
    from kim_appliance.fachdienst.context import Fachdienst

#: a KAS upload's reservation lapses after this long if its upload neither commits nor fails
#: (a node that died mid-upload; the embedded store drops every reservation when it opens)
UPLOAD_RESERVATION_TTL = dt.timedelta(hours=6)


async def usage(fd: Fachdienst, account: Account, now: dt.datetime | None = None) -> int:
    """Bytes the account uses against its quota: mailbox + stored KAS uploads + reservations."""
    return await fd.store.mail.usage(account.address, now or dt.datetime.now(dt.UTC))


async def remaining(fd: Fachdienst, account: Account, now: dt.datetime | None = None) -> int:
    """``remainQuota`` (AccountLimit, digest §3.4): bytes left, or -1 for unlimited."""
    if account.quota_bytes == UNLIMITED:
        return UNLIMITED
    return max(0, account.quota_bytes - await usage(fd, account, now))
