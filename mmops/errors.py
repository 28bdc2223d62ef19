"""The one exception tree of mmops, organised by what the caller should do.

::

    MmopsError
    ├── ConfigurationError        fix the settings; exit code 2, never retried
    │   └── UnknownSession            a --session that no store knows
    ├── TemporaryError            retry later: a run reports it, the next scheduled run tries again
    │   ├── ExchangeUnavailable       5xx, maintenance, connection reset
    │   ├── ExchangeTimeout           no answer; the request MAY have been accepted (look it up)
    │   ├── RateLimited               the venue's limiter said no; wait, then retry
    │   ├── LockNotAcquired           another worker holds the lock; try again next run
    │   ├── LockLost                  the lock was lost mid-run: stop sending for that session
    │   └── FeedDisconnected          the execution stream dropped: gap-fill, then reconnect
    ├── OperationalError          stop this run and alert a person
    │   ├── StoreUnavailable          Redis or PostgreSQL does not answer (names which)
    │   │   └── StoreAuthenticationFailed   it answers, but refuses the URL's user or password
    │   ├── AuthenticationFailed      the exchange refused the API key
    │   └── IntegrityError            an invariant of mmops itself does not hold
    ├── ExchangeRejected          the exchange refused the order: record, don't retry blindly
    │   ├── PostOnlyWouldTake         the maker order would have crossed the book
    │   ├── InsufficientFunds
    │   ├── MinimumNotMet             below the market's minimum amount or cost
    │   ├── DeadlineRefused           the request's deadline had passed (or was outside the window)
    │   └── OrderNotFound
    └── BadDataError              quarantine the record (or reject the input), go on
        ├── BadRecordError            a stored record that does not parse; carries key and raw value
        └── InvalidIdentifier         a session id or pair that could escape its key or its SQL

A run handles ``RECOVERABLE`` errors per order, pair or session and goes on; an
``OperationalError`` (a store down, the API key refused) or a ``ConfigurationError`` ends it.

Library errors (redis, psycopg, ccxt) are mapped into this tree once, at the adapter boundary,
with ``raise ... from e``. Messages never contain secrets: adapters pass URLs through
:func:`mmops.config.redact_url` before they name a server.
"""

from __future__ import annotations


class MmopsError(Exception):
    """Base of every error mmops raises on purpose."""


class ConfigurationError(MmopsError):
    """A setting is missing or malformed; the message names the variable."""


class UnknownSession(ConfigurationError):
    """A session named by the caller (``--session``) that neither Redis nor PostgreSQL knows.

    Every command says it in the same words, with exit code 2."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"no session {session_id!r} in Redis or PostgreSQL")
        self.session_id = session_id


class TemporaryError(MmopsError):
    """A transient condition; the same call may succeed after a backoff."""


class FeedDisconnected(TemporaryError):
    """The venue's execution stream closed or stopped answering; what it missed is read from
    the venue's trade history before streaming again."""


class ExchangeUnavailable(TemporaryError):
    """The exchange answered with a server error or could not be reached."""


class ExchangeTimeout(TemporaryError):
    """The exchange did not answer in time; an order may or may not have been accepted."""


class LockLost(TemporaryError):
    """This worker's settlement lock of a session expired or was taken (a pause, a stalled
    VM): it sends nothing more for the session; the lock's new holder carries on."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"lost the settlement lock of session {session_id}: sending stopped")
        self.session_id = session_id


class RateLimited(TemporaryError):
    """The exchange's rate limiter refused the call."""


class LockNotAcquired(TemporaryError):
    """Another worker holds the lock for this session."""


class OperationalError(MmopsError):
    """Stop the current run and alert an operator."""


class StoreUnavailable(OperationalError):
    """Redis or PostgreSQL does not answer. ``store`` says which one."""

    def __init__(self, store: str, detail: str) -> None:
        self.store = store
        self.detail = detail
        super().__init__(f"{store} is unavailable: {detail}")


class StoreAuthenticationFailed(StoreUnavailable):
    """The store answers but refuses the credentials of its URL (a wrong user or password, or
    no ``pg_hba.conf`` entry that admits them): retrying will not help until the URL or the
    server's access rules change. Not an :class:`AuthenticationFailed`, which is the exchange's.
    """

    def __init__(self, store: str, detail: str) -> None:
        super().__init__(store, f"authentication failed: {detail}")


class AuthenticationFailed(OperationalError):
    """The exchange refused the credentials."""


class IntegrityError(OperationalError):
    """An invariant mmops relies on does not hold (e.g. counts differ after migration)."""


class ExchangeRejected(MmopsError):
    """The exchange refused an order for a reason that retrying will not change."""


class PostOnlyWouldTake(ExchangeRejected):
    """A post-only order would have matched immediately, so the exchange cancelled it."""


class InsufficientFunds(ExchangeRejected):
    """The account's free balance does not cover the order."""


class MinimumNotMet(ExchangeRejected):
    """The order is below the market's minimum amount or cost."""


class DeadlineRefused(ExchangeRejected):
    """The venue refused the request for its deadline: it arrived after the deadline, or the
    deadline lay outside the venue's window. The order was not placed, and can never be."""


class OrderNotFound(ExchangeRejected):
    """No such order on the exchange."""


class BadDataError(MmopsError):
    """Input or stored data that cannot be used; quarantine it and carry on."""


class BadRecordError(BadDataError):
    """A stored record that does not parse.

    ``key`` is where it was read from, ``raw`` the value as stored (truncated for messages, kept
    whole on the attribute so it can be quarantined), ``reason`` what is wrong with it.
    """

    def __init__(self, key: str, raw: object, reason: str) -> None:
        self.key = key
        self.raw = raw
        self.reason = reason
        shown = repr(raw)
        if len(shown) > 200:
            shown = shown[:200] + "…"
        super().__init__(f"bad record at {key!r}: {reason} (raw={shown})")


class InvalidIdentifier(BadDataError):
    """A session id or pair symbol that does not match the allowed form."""


# What a run handles locally and continues past; anything else ends the run.
RECOVERABLE: tuple[type[MmopsError], ...] = (TemporaryError, ExchangeRejected, BadDataError)
# The same, with the errors of bad input that are not ours (a lookup or a value refused).
RECOVERABLE_INPUT: tuple[type[Exception], ...] = (*RECOVERABLE, LookupError, ValueError)
