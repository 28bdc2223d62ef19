"""The records that cross the store ports (take-profit metadata, settlement status) become
Redis hash fields in the codec and come back unchanged: the fields are the ones mmops has
always written, so hashes already in Redis still read, and a hash that does not parse is a
BadRecordError to quarantine."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmops.adapters.redis import codec
from mmops.domain.models import Order, OrderKind, OrderStatus, Side
from mmops.domain.pnl import StopLossLevel
from mmops.domain.records import (
    RunState,
    SettlementStatus,
    StopLossFigures,
    TakeProfitRecord,
    TpStatus,
)
from mmops.errors import BadRecordError

D = Decimal
AT = datetime(2026, 11, 1, 12, 0, 0, 123456, tzinfo=UTC)

PLACED = TakeProfitRecord(
    position="BTC-b7",
    pair="BTC/USD",
    price=D("50123.10"),
    amount=D("0.00150000"),
    tier=240,
    markup=D("0.0035"),
    client_order_id="4f1c2b9e-0000-5000-8000-000000000001",
    generation=2,
    created_at=AT,
)
RECOVERED = replace(PLACED, tier=None, markup=None)

# The hash as settlement wrote it before the record existed (services/take_profit._metadata).
PLACED_FIELDS = {
    "position": "BTC-b7",
    "pair": "BTC/USD",
    "price": "50123.10",
    "amount": "0.00150000",
    "tier": "240",
    "markup": "0.0035",
    "client_order_id": "4f1c2b9e-0000-5000-8000-000000000001",
    "generation": "2",
    "created_at": "2026-11-01T12:00:00.123456+00:00",
    "status": "open",
}

STATUS = SettlementStatus(
    state=RunState.PARTIAL,
    placed=36,
    skipped=2,
    failed=1,
    errors=("ETH/USD: ExchangeUnavailable: down", 'SOL/USD b1: "quoted" ünïcode'),
    duration_ms=1520,
    finished_at=AT,
    worker="host-1:4242",
    dry_run=False,
    stoploss=StopLossFigures(
        equity=D("9850.25"),
        peak_equity=D("10000.00"),
        drawdown=D("0.015"),
        level=StopLossLevel.NONE,
    ),
)

# The hash as settlement wrote it before the record existed (services/settlement._record).
STATUS_FIELDS = {
    "state": "partial",
    "placed": "36",
    "skipped": "2",
    "failed": "1",
    "errors": json.dumps(list(STATUS.errors)),
    "duration_ms": "1520",
    "finished_at": "2026-11-01T12:00:00.123456+00:00",
    "worker": "host-1:4242",
    "dry_run": "false",
    "equity": "9850.25",
    "peak_equity": "10000.00",
    "drawdown": "0.015",
    "stoploss_level": "none",
}


def test_a_take_profit_is_written_with_the_fields_settlement_always_wrote() -> None:
    assert codec.take_profit_to_fields(PLACED) == PLACED_FIELDS
    assert list(codec.take_profit_to_fields(PLACED)) == list(PLACED_FIELDS)  # same order
    recovered = codec.take_profit_to_fields(RECOVERED)
    assert (recovered["tier"], recovered["markup"]) == ("", "")


@pytest.mark.parametrize("status", list(TpStatus))
@pytest.mark.parametrize("record", [PLACED, RECOVERED])
def test_a_take_profit_reads_back_as_it_was_written(
    record: TakeProfitRecord, status: TpStatus
) -> None:
    record = replace(record, status=status)
    fields = codec.take_profit_to_fields(record)
    assert codec.take_profit_from_fields(fields) == record
    assert codec.take_profit_to_fields(codec.take_profit_from_fields(fields)) == fields


def test_a_stored_take_profit_hash_reads_with_its_decimals_exact() -> None:
    record = codec.take_profit_from_fields(PLACED_FIELDS)
    assert record == PLACED
    assert (str(record.price), str(record.amount)) == ("50123.10", "0.00150000")
    assert record.status is TpStatus.OPEN and record.tier == 240


def test_a_take_profit_created_at_another_offset_is_written_back_as_it_was() -> None:
    cet = timezone(timedelta(hours=1))
    record = replace(PLACED, created_at=AT.astimezone(cet))
    fields = codec.take_profit_to_fields(record)
    assert fields["created_at"] == "2026-11-01T13:00:00.123456+01:00"
    assert codec.take_profit_to_fields(codec.take_profit_from_fields(fields)) == fields


@settings(max_examples=200, deadline=None)
@given(
    price=st.decimals(min_value=D("1E-12"), max_value=D("1E+12"), places=None).filter(
        lambda d: d.is_finite()
    ),
    amount=st.decimals(allow_nan=False, allow_infinity=False),
    tier=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_any_take_profit_round_trips_exactly(price: D, amount: D, tier: int | None) -> None:
    record = replace(
        PLACED, price=price, amount=amount, tier=tier, markup=None if tier is None else price
    )
    decoded = codec.take_profit_from_fields(codec.take_profit_to_fields(record))
    assert decoded == record
    assert str(decoded.price) == str(price) and str(decoded.amount) == str(amount)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("status", "closed"),
        ("status", "OPEN"),
        ("tier", "x"),
        ("tier", " 240"),
        ("tier", "2_40"),
        ("generation", "1.0"),
        ("price", "NaN"),
        ("amount", "1e"),
        ("created_at", "2026-11-01T12:00:00"),
        ("created_at", ""),
        ("position", None),
    ],
)
def test_a_take_profit_hash_that_does_not_parse_is_a_bad_record(
    field: str, value: str | None
) -> None:
    fields = dict(PLACED_FIELDS)
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    with pytest.raises(BadRecordError) as raised:
        codec.decode("tp_order:{s}:o1", fields, codec.take_profit_from_fields)
    assert raised.value.key == "tp_order:{s}:o1" and raised.value.raw == fields


def test_a_settlement_status_is_written_with_the_fields_settlement_always_wrote() -> None:
    assert codec.settlement_status_to_fields(STATUS) == STATUS_FIELDS
    assert list(codec.settlement_status_to_fields(STATUS)) == list(STATUS_FIELDS)
    before_any_stoploss = codec.settlement_status_to_fields(
        replace(STATUS, stoploss=None, dry_run=True)
    )
    assert set(STATUS_FIELDS) - set(before_any_stoploss) == {
        "equity", "peak_equity", "drawdown", "stoploss_level"
    }  # fmt: skip
    assert before_any_stoploss["dry_run"] == "true"


@pytest.mark.parametrize("state", list(RunState))
@pytest.mark.parametrize("stoploss", [STATUS.stoploss, None])
def test_a_settlement_status_reads_back_as_it_was_written(
    state: RunState, stoploss: StopLossFigures | None
) -> None:
    status = replace(STATUS, state=state, stoploss=stoploss, errors=())
    fields = codec.settlement_status_to_fields(status)
    assert codec.settlement_status_from_fields(fields) == status


def test_a_stored_settlement_status_hash_reads_with_its_decimals_exact() -> None:
    status = codec.settlement_status_from_fields(STATUS_FIELDS)
    assert status == STATUS
    assert status.stoploss is not None and str(status.stoploss.peak_equity) == "10000.00"
    assert status.stoploss_level is StopLossLevel.NONE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("state", "halted"),
        ("placed", "many"),
        ("duration_ms", "1.5"),
        ("errors", "{not json"),
        ("errors", '{"a": 1}'),
        ("errors", "[1, 2]"),
        ("dry_run", "True"),
        ("finished_at", "yesterday"),
        ("stoploss_level", "panic"),
        ("peak_equity", "Infinity"),
        ("peak_equity", None),  # a stop-loss measure is all four figures or none
        ("worker", None),
    ],
)
def test_a_settlement_status_hash_that_does_not_parse_is_a_bad_record(
    field: str, value: str | None
) -> None:
    fields = dict(STATUS_FIELDS)
    if value is None:
        del fields[field]
    else:
        fields[field] = value
    with pytest.raises(BadRecordError) as raised:
        codec.decode("settlement:status:{s}", fields, codec.settlement_status_from_fields)
    assert raised.value.key == "settlement:status:{s}"


# -- the order record of a take-profit, and script arguments -------------------------------


def _order_json_the_plain_way(o: Order) -> str:
    """What ``order_to_json`` wrote before it was written by hand: json.dumps of the fields."""
    return json.dumps(
        {
            "order_id": o.order_id,
            "session_id": o.session_id,
            "symbol": o.symbol,
            "side": o.side.value,
            "price": str(o.price),
            "amount": str(o.amount),
            "filled": str(o.filled),
            "status": o.status.value,
            "kind": o.kind.value,
            "client_order_id": o.client_order_id,
            "created_at": codec.iso(o.created_at),
        },
        separators=(",", ":"),
    )


POSITIVE = st.decimals(min_value=D("1E-30"), max_value=D("1E+30"), places=None).filter(
    lambda d: d.is_finite() and d > 0
)


@settings(max_examples=300, deadline=None)
@given(
    price=POSITIVE,
    amount=POSITIVE,
    filled=st.one_of(st.just(D(0)), POSITIVE),
    client_order_id=st.one_of(st.none(), st.text(max_size=40), st.uuids().map(str)),
    kind=st.sampled_from(OrderKind),
    status=st.sampled_from(OrderStatus),
    offset=st.integers(-12, 14),
)
def test_an_order_is_written_byte_for_byte_as_json_dumps_writes_it(
    price: D,
    amount: D,
    filled: D,
    client_order_id: str | None,
    kind: OrderKind,
    status: OrderStatus,
    offset: int,
) -> None:
    """Migration's fast path reads the exact layout: the hand-written JSON must not drift."""
    at = AT.astimezone(timezone(timedelta(hours=offset)))
    order = Order(
        "s-1", "o-1", "BTC/USD", Side.SELL, price, amount, at, status, filled, kind,
        client_order_id,
    )  # fmt: skip
    written = codec.order_to_json(order)
    assert written == _order_json_the_plain_way(order)
    assert codec.order_from_json(written) == replace(order, created_at=at.astimezone(UTC))


def test_script_arguments_join_values_and_refuse_one_holding_the_separator() -> None:
    assert codec.joined(["a", "", "1.5"]) == "a||1.5"
    with pytest.raises(ValueError, match="holds"):
        codec.joined(["a", "b|c"])


def test_take_profit_values_follow_the_field_names() -> None:
    assert dict(zip(codec.TAKE_PROFIT_FIELDS, codec.take_profit_values(PLACED), strict=True)) == (
        PLACED_FIELDS
    )
