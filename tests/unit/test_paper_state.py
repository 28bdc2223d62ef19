"""The paper venue's order record: written by hand, byte for byte what json.dumps wrote."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from mmops.adapters.paper.state import PaperOrder
from mmops.domain.exchange import ExchangeOrder
from mmops.domain.models import OrderStatus, Side


def _the_plain_way(p: PaperOrder) -> str:
    """What ``PaperOrder.encode`` wrote before it was written by hand."""
    o = p.order
    return json.dumps(
        {
            "id": o.id, "symbol": o.symbol, "side": o.side.value, "price": str(o.price),
            "amount": str(o.amount), "filled": str(o.filled), "status": o.status.value,
            "created_at": o.created_at.timestamp(), "client_order_id": o.client_order_id,
            "hold": str(p.hold),
        },
        separators=(",", ":"),
    )  # fmt: skip


POSITIVE = st.decimals(min_value=D("1E-30"), max_value=D("1E+30"), places=None).filter(
    lambda d: d.is_finite() and d > 0
)
NOT_NEGATIVE = st.one_of(st.just(D(0)), st.just(D("0E-8")), POSITIVE)
TIMES = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


@given(
    order_id=st.text(),
    side=st.sampled_from(Side),
    price=POSITIVE,
    amount=POSITIVE,
    filled=NOT_NEGATIVE,
    status=st.sampled_from(OrderStatus),
    at=TIMES,
    client_order_id=st.one_of(st.none(), st.text()),
    hold=NOT_NEGATIVE,
)
def test_the_order_record_is_what_json_dumps_wrote(
    order_id: str,
    side: Side,
    price: D,
    amount: D,
    filled: D,
    status: OrderStatus,
    at: datetime,
    client_order_id: str | None,
    hold: D,
) -> None:
    order = ExchangeOrder(
        order_id, "BTC/USD", side, price, amount, status, at, filled, client_order_id
    )
    paper = PaperOrder(order, hold)
    written = paper.encode()
    assert written == _the_plain_way(paper)
    assert PaperOrder.decode(written).encode() == written


@given(
    at=TIMES,
    offsets=st.lists(st.integers(min_value=-1439, max_value=1439), min_size=1, max_size=4),
)
def test_the_time_is_written_alike_for_one_instant_in_any_zone_and_any_number_of_times(
    at: datetime, offsets: list[int]
) -> None:
    """The written epoch seconds are remembered per instant: one instant in several zones,
    or written again, reads the same as json.dumps wrote it."""
    for minutes in offsets:
        local = at.astimezone(timezone(timedelta(minutes=minutes)))
        order = ExchangeOrder("O-1", "BTC/USD", Side.SELL, D(1), D(1), OrderStatus.OPEN, local)
        for _ in range(2):
            assert PaperOrder(order, D(1)).encode() == _the_plain_way(PaperOrder(order, D(1)))
