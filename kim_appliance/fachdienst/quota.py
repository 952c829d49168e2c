"""The account quota of a Fachdienst: what counts, and an atomic check-and-reserve per mailbox.

digest §3.2 has one quota per account (``quota``/``remainQuota`` in bytes, -1 = unlimited) and
§3.5 lets the KAS answer 507 when an upload does not fit it (KAS-ref checks it against the
Account Manager's ``POST /quota``). Here the quota covers, per account:

* the messages in its mailbox (what POP3 ``RETR`` sends: trace prefix + body);
* the KAS attachments it uploaded that are still stored (until they expire or are deleted);
* KAS uploads of the account still in flight (reserved at their declared size).

KAS blobs count for the uploader, not for the recipients: the recipients' mailboxes hold only
the small KIM message with the link. Two deliveries (or an upload and a delivery) into the same
mailbox must not together overshoot the quota, so every check runs under the mailbox's lock of
:class:`QuotaLedger`, and the delivery (or the reservation) happens before the lock is released.

Blocking (store queries, thread locks): call it from worker threads, never from the trio thread.
This module decides and counts; it never stores a message and never speaks SMTP or HTTP.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING

from kim_appliance.store.base import UNLIMITED, Account

if TYPE_CHECKING:
    from kim_appliance.fachdienst.context import Fachdienst


class QuotaExceeded(Exception):
    """An account has no room for the bytes asked for (552 5.2.2 in SMTP, 507 in the KAS)."""

    def __init__(self, address: str, *, quota: int, used: int, size: int, what: str) -> None:
        super().__init__(
            f"mailbox {address} is full: {used} of {quota} bytes used (mailbox and KAS "
            f"together), the {what} has {size}"
        )
        self.address = address
        self.quota = quota
        self.used = used
        self.size = size


class QuotaLedger:
    """Per-mailbox locks and the bytes of KAS uploads in flight; thread-safe."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}
        self._reserved: dict[str, int] = {}

    @contextlib.contextmanager
    def locked(self, addresses: Iterable[str]) -> Iterator[None]:
        """Hold the locks of ``addresses`` (taken in sorted order: no deadlock between two
        messages for the same mailboxes)."""
        keys = sorted({a.lower() for a in addresses})
        with self._guard:
            locks = [self._locks.setdefault(k, threading.Lock()) for k in keys]
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            yield

    def reserved(self, address: str) -> int:
        with self._guard:
            return self._reserved.get(address.lower(), 0)

    def _add(self, address: str, size: int) -> None:
        key = address.lower()
        with self._guard:
            left = self._reserved.get(key, 0) + size
            if left > 0:
                self._reserved[key] = left
            else:
                self._reserved.pop(key, None)

    def release(self, address: str, size: int) -> None:
        """Give back a reservation of :func:`reserve_upload` (after the upload committed or
        failed)."""
        self._add(address, -size)


def usage(fd: Fachdienst, account: Account) -> int:
    """Bytes the account uses against its quota: mailbox + stored KAS uploads + reservations."""
    used = fd.store.mailbox_usage(account.address)
    if fd.kas is not None:
        used += fd.kas.usage(account.address)
    return used + fd.quota.reserved(account.address)


def remaining(fd: Fachdienst, account: Account) -> int:
    """``remainQuota`` (AccountLimit, digest §3.4): bytes left, or -1 for unlimited."""
    if account.quota_bytes == UNLIMITED:
        return UNLIMITED
    return max(0, account.quota_bytes - usage(fd, account))


def _check(fd: Fachdienst, address: str, size: int, what: str) -> None:
    account = fd.store.get_account(address)
    if account is None or account.quota_bytes == UNLIMITED:
        return
    used = usage(fd, account)
    if used + size > account.quota_bytes:
        raise QuotaExceeded(
            account.address, quota=account.quota_bytes, used=used, size=size, what=what
        )


@contextlib.contextmanager
def room_for_delivery(fd: Fachdienst, addresses: Iterable[str], size: int) -> Iterator[None]:
    """Check that every local mailbox in ``addresses`` has room for ``size`` more bytes and
    keep their locks until the block (which stores the message) ends; QuotaExceeded if not."""
    targets = list(addresses)
    with fd.quota.locked(targets):
        for address in targets:
            _check(fd, address, size, "message")
        yield


def reserve_upload(fd: Fachdienst, address: str, size: int) -> None:
    """Check and reserve ``size`` bytes of a KAS upload for ``address`` in one step; the caller
    gives it back with ``fd.quota.release(address, size)``. QuotaExceeded if it does not fit."""
    with fd.quota.locked([address]):
        _check(fd, address, size, "attachment")
        fd.quota._add(address, size)
