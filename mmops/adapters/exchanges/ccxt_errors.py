"""ccxt's exceptions, mapped once into :mod:`mmops.errors`.

ccxt raises its own tree (``ccxt.base.errors``); callers of the ``Exchange`` port only know ours,
organised by what to do next (retry, alert, record). Kraken reports several refusals with no
dedicated ccxt class (``EOrder:Post only order``, ``EAPI:Invalid signature``), so the mapping
also reads the exchange's error string.

Messages are rebuilt from the exchange's error strings where they can be found, otherwise from
ccxt's text, and always scrubbed: ccxt puts URLs and response bodies in its messages, and an
API key or secret must never reach a log line or an exception. Request headers are never used.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from typing import Any

import ccxt.async_support as ccxt_async
from ccxt.base import errors as cx

from mmops import logs
from mmops.errors import (
    AuthenticationFailed,
    DeadlineRefused,
    ExchangeRejected,
    ExchangeTimeout,
    ExchangeUnavailable,
    InsufficientFunds,
    MinimumNotMet,
    MmopsError,
    OrderNotFound,
    PostOnlyWouldTake,
    RateLimited,
)

_MAX_TEXT = 300
_KRAKEN_ERROR = re.compile(r"\b[EW][A-Z][A-Za-z]*:[^\"\]\[,]+")

# Exchange error strings that ccxt leaves as a plain ExchangeError, by what they mean.
_BY_TEXT: tuple[tuple[str, type[MmopsError]], ...] = (
    # Kraken's refusals of a request's ``deadline`` (elapsed on arrival, or outside its
    # window): the order never reached the book, so this is a refusal, not an unknown outcome.
    ("deadline elapsed", DeadlineRefused),
    ("invalid arguments:deadline", DeadlineRefused),
    ("post only order", PostOnlyWouldTake),
    ("invalid signature", AuthenticationFailed),
    ("invalid key", AuthenticationFailed),
    ("permission denied", AuthenticationFailed),
    ("rate limit exceeded", RateLimited),
    # "EService: Throttled: [UNIX timestamp]" if there are too many concurrent requests: try
    # again after the timestamp (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits).
    ("throttled", RateLimited),
    # A pair in a restricted mode refuses what that mode does not admit ("EService:Market in
    # cancel_only mode", as ccxt's Kraken error table has it); ccxt files these under
    # OnMaintenance, but the order was refused: it is recorded, the pair's status says when.
    ("market in cancel_only mode", ExchangeRejected),
    ("market in post_only mode", ExchangeRejected),
    ("market in limit_only mode", ExchangeRejected),
    ("market in reduce_only mode", ExchangeRejected),
    ("insufficient funds", InsufficientFunds),
    ("minimum not met", MinimumNotMet),
    ("unknown order", OrderNotFound),
)

# ccxt classes, most specific first: the first match wins.
_BY_CLASS: tuple[tuple[type[Exception], type[MmopsError]], ...] = (
    (cx.RequestTimeout, ExchangeTimeout),
    (cx.DDoSProtection, RateLimited),
    (cx.RateLimitExceeded, RateLimited),
    (cx.NetworkError, ExchangeUnavailable),  # incl. ExchangeNotAvailable, InvalidNonce
    (cx.AuthenticationError, AuthenticationFailed),
    (cx.InsufficientFunds, InsufficientFunds),
    (cx.OrderImmediatelyFillable, PostOnlyWouldTake),
    (cx.OrderNotFound, OrderNotFound),
    (cx.ExchangeError, ExchangeRejected),
    (cx.BaseError, ExchangeUnavailable),  # BadResponse, CancelPending, ...
)


def safe_text(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` without any registered or given secret, cut to a readable length."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = logs.scrub(text)
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"


def describe(e: BaseException, secrets: Sequence[str] = ()) -> str:
    """A short, secret-free account of ``e``: the exchange's error strings when present."""
    raw = str(e)
    found = _KRAKEN_ERROR.findall(raw)
    if found:
        exchange = raw.split(" ", 1)[0]
        raw = f"{exchange}: {'; '.join(s.strip() for s in found)}"
    return safe_text(raw or type(e).__name__, secrets)


def map_error(e: BaseException, secrets: Sequence[str] = ()) -> MmopsError:
    """The ``mmops.errors`` exception for a ccxt (or asyncio timeout) exception.

    The caller raises it ``from e``. Anything that is not a ccxt error or a timeout is a bug
    rather than an exchange condition; it maps to ExchangeUnavailable so a run reports it,
    with its type name in the message.
    """
    text = describe(e, secrets)
    if isinstance(e, asyncio.TimeoutError | TimeoutError):
        return ExchangeTimeout(text)
    if isinstance(e, cx.ExchangeError | cx.OnMaintenance) and not isinstance(
        e, cx.AuthenticationError
    ):
        lowered = str(e).lower()
        for needle, mapped in _BY_TEXT:
            if needle in lowered:
                return mapped(text)
    if isinstance(e, cx.InvalidOrder) and "minimum" in str(e).lower():
        return MinimumNotMet(text)
    for ccxt_class, mapped in _BY_CLASS:
        if isinstance(e, ccxt_class):
            return mapped(text)
    return ExchangeUnavailable(f"{type(e).__name__}: {text}")


def order_error(client: Any, text: str, secrets: Sequence[str] = ()) -> MmopsError:
    """The error of one order of a batch, reported by the exchange as a string.

    Goes through the exchange's own ccxt error table first (exactly as a whole-call error
    would), then through :func:`map_error`, so a batch and a single order map the same way.
    """
    message = f"{client.id} {text}"
    try:
        client.throw_exactly_matched_exception(client.exceptions["exact"], text, message)
        client.throw_broadly_matched_exception(client.exceptions["broad"], text, message)
    except cx.BaseError as e:
        mapped = map_error(e, secrets)
        mapped.__cause__ = e
        return mapped
    return map_error(cx.ExchangeError(message), secrets)


class KrakenClient(ccxt_async.kraken):  # type: ignore[misc]  # ccxt is untyped
    """ccxt's Kraken, letting AddOrderBatch's per-order errors through to the adapter.

    Kraken places the accepted orders of a batch and reports each refused one in
    ``result.orders[i].error``; stock ccxt raises on the first such error, which would hide
    the orders that *were* placed. Errors at the top level still raise as usual.
    """

    def handle_errors(
        self,
        code: int,
        reason: str,
        url: str,
        method: str,
        headers: Any,
        body: str,
        response: Any,
        request_headers: Any,
        request_body: Any,
    ) -> None:
        if (
            isinstance(response, dict)
            and not response.get("error")
            and isinstance(response.get("result"), dict)
            and isinstance(response["result"].get("orders"), list)
        ):
            return None
        return super().handle_errors(  # type: ignore[no-any-return]
            code, reason, url, method, headers, body, response, request_headers, request_body
        )
