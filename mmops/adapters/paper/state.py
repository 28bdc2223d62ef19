"""The paper venue's state in Redis: key names and record encoding.

All keys of one venue share the hash tag ``{V}`` so a transaction or script may span them on a
cluster.

| key | type | contents |
|---|---|---|
| ``paper:{V}:balance:<asset>`` | STRING | ``"total|used"`` (decimal strings) |
| ``paper:{V}:assets`` | SET | assets that have a balance key |
| ``paper:{V}:orders`` | HASH | order id → JSON order |
| ``paper:{V}:open`` | SET | ids of open orders |
| ``paper:{V}:clients:<pair>`` | HASH | client order id → the latest order accepted with it |
| ``paper:{V}:trades`` | LIST | JSON trades, oldest first (a reader keeps its own index) |
| ``paper:{V}:rate:<pair>`` | STRING | ``"value|at"``: the pair's trading counter |
| ``paper:{V}:adjust:<pair>`` | STRING | price multiplier (a test's or demo's price shock) |
| ``paper:{V}:seq`` | STRING | counter for trade ids |
| ``paper:{V}:seq:<pair>`` | STRING | counter for the pair's order ids |
| ``paper:{V}:down`` | STRING | while it exists, ``tickers`` fails as if the venue were down |
| ``paper:{V}:matched_at`` | STRING | epoch seconds up to which resting orders were matched |
| ``paper:{V}:windows`` | STREAM | a match's ``start``, ``end``, ``step``, ``adjust:<pair>`` |
| ``paper:{V}:status`` | HASH | pair → its mode when not online |
| ``paper:{V}:open:cancelling`` | SET | ids of open orders whose cancel is pending |

``windows`` holds the last ``WINDOWS_KEPT`` matches (the shocks each used included), so
``fill_path`` gives the quotes every match filled on, whoever called it.

Balances, client ids and counters are split per asset and per pair so that placements on
pairs sharing nothing never conflict (a change checks only what it read). Order ids
are numbered per pair (``P-BTC_USD-00000001``) for the same reason, and so that they do not
depend on how placements on different pairs interleave: settlement places every pair's batch
at once, and one venue-wide counter gave the same seed's run other ids on every run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from mmops.domain.exchange import ExchangeOrder, Trade
from mmops.domain.models import ZERO, OrderStatus, Side, check_session_id, check_symbol


class VenueKeys:
    def __init__(self, venue: str) -> None:
        self._prefix = "paper:{" + check_session_id(venue) + "}"
        self.assets = f"{self._prefix}:assets"
        self.orders = f"{self._prefix}:orders"
        self.open = f"{self._prefix}:open"
        self.trades = f"{self._prefix}:trades"
        self.seq = f"{self._prefix}:seq"
        self.matched_at = f"{self._prefix}:matched_at"
        self.windows = f"{self._prefix}:windows"  # stream: each match's span, for fill paths
        self.down = f"{self._prefix}:down"
        self.status = f"{self._prefix}:status"  # hash: pair → PairStatus other than online
        self.cancelling = f"{self.open}:cancelling"  # set: ids whose cancel is pending
        self.pattern = "paper:\\{" + venue + "\\}:*"
        self._per_pair: dict[tuple[str, str], str] = {}  # (kind, pair) → key, pair checked

    def all(self, assets: Iterable[str], symbols: Iterable[str]) -> list[str]:
        """Every key the venue may have written for these assets and pairs: what ``reset``
        deletes, by name (no SCAN, so it works on a cluster, where all of them share the
        venue's slot)."""
        fixed = [self.assets, self.orders, self.open, self.trades, self.seq, self.matched_at,
                 self.windows, self.down, self.status, self.cancelling]  # fmt: skip
        per_pair = [
            k
            for s in symbols
            for k in (self.clients(s), self.adjust(s), self.rate(s), self.order_seq(s))
        ]
        return fixed + [self.balance(a) for a in assets] + per_pair

    def balance(self, asset: str) -> str:
        return f"{self._prefix}:balance:{asset}"

    def clients(self, symbol: str) -> str:
        return self._pair_key("clients", symbol)

    def adjust(self, symbol: str) -> str:
        return self._pair_key("adjust", symbol)

    def rate(self, symbol: str) -> str:
        return self._pair_key("rate", symbol)

    def order_seq(self, symbol: str) -> str:
        return self._pair_key("seq", symbol)

    def _pair_key(self, kind: str, symbol: str) -> str:
        """``paper:{V}:<kind>:<pair>``, the pair checked once (every placement names four)."""
        key = self._per_pair.get((kind, symbol))
        if key is None:
            key = self._per_pair[(kind, symbol)] = f"{self._prefix}:{kind}:{check_symbol(symbol)}"
        return key


@dataclass(frozen=True, slots=True)
class Holding:
    total: Decimal
    used: Decimal

    @property
    def free(self) -> Decimal:
        return self.total - self.used

    def encode(self) -> str:
        return f"{self.total}|{self.used}"

    @staticmethod
    def decode(raw: str | None) -> Holding:
        if not raw:
            return Holding(ZERO, ZERO)
        total, used = raw.split("|")
        return Holding(Decimal(total), Decimal(used))


@dataclass(frozen=True, slots=True)
class PaperOrder:
    """An order with what the venue needs beyond ``ExchangeOrder``: the hold it reserved."""

    order: ExchangeOrder
    hold: Decimal  # amount of the held asset still reserved (base for sells, quote for buys)

    def encode(self) -> str:
        """Compact JSON, written by hand exactly as ``json.dumps`` would (the pair, enums,
        decimals and time are plain by construction; the ids go through ``_json_text``): the
        venue encodes every order it accepts."""
        o = self.order
        return (
            f'{{"id":{_json_text(o.id)},"symbol":"{o.symbol}","side":"{o.side._value_}",'
            f'"price":"{o.price}","amount":"{o.amount}","filled":"{o.filled}",'
            f'"status":"{o.status._value_}","created_at":{_epoch(o.created_at)},'
            f'"client_order_id":{_json_text(o.client_order_id)},"hold":"{self.hold}"}}'
        )

    @staticmethod
    def decode(raw: str) -> PaperOrder:
        d: dict[str, Any] = json.loads(raw)
        order = ExchangeOrder(
            id=d["id"],
            symbol=d["symbol"],
            side=Side(d["side"]),
            price=Decimal(d["price"]),
            amount=Decimal(d["amount"]),
            status=OrderStatus(d["status"]),
            created_at=datetime.fromtimestamp(d["created_at"], UTC),
            filled=Decimal(d["filled"]),
            client_order_id=d["client_order_id"],
        )
        return PaperOrder(order, Decimal(d["hold"]))

    def with_fill(self, qty: Decimal, hold_released: Decimal) -> PaperOrder:
        filled = self.order.filled + qty
        status = OrderStatus.FILLED if filled >= self.order.amount else OrderStatus.OPEN
        return PaperOrder(
            replace(self.order, filled=filled, status=status), self.hold - hold_released
        )


@lru_cache(maxsize=64)
def _epoch(at: datetime) -> str:
    """``repr`` of the aware ``at``'s epoch seconds, as ``json.dumps`` writes the float. Kept
    for the last few times: the orders of a batch share one, and the float's repr is dear. An
    aware datetime equals another only at the same instant, so an equal key has this answer."""
    return repr(at.timestamp())


# Text JSON writes as is (json.dumps escapes anything else): printable ASCII but " and \.
_PLAIN_JSON = re.compile(r"[ !#-\[\]-~]*")


def _json_text(value: str | None) -> str:
    """``value`` as ``json.dumps`` writes it."""
    if value is None:
        return "null"
    return f'"{value}"' if _PLAIN_JSON.fullmatch(value) else json.dumps(value)


def encode_trade(t: Trade) -> str:
    return json.dumps(
        {
            "id": t.id, "order_id": t.order_id, "symbol": t.symbol, "side": t.side.value,
            "price": str(t.price), "amount": str(t.amount), "fee": str(t.fee),
            "timestamp": t.timestamp.timestamp(), "client_order_id": t.client_order_id,
        },
        separators=(",", ":"),
    )  # fmt: skip


def decode_trade(raw: str) -> Trade:
    d: dict[str, Any] = json.loads(raw)
    return Trade(
        id=d["id"],
        order_id=d["order_id"],
        symbol=d["symbol"],
        side=Side(d["side"]),
        price=Decimal(d["price"]),
        amount=Decimal(d["amount"]),
        fee=Decimal(d["fee"]),
        timestamp=datetime.fromtimestamp(d["timestamp"], UTC),
        client_order_id=d["client_order_id"],
    )
