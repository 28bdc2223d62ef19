"""The local Kraken REST server speaks Kraken: signatures, nonces, shapes, refusals, counter.

Requests here are built by hand (no ccxt), so the server is checked against Kraken's
documented rules rather than against the client it will serve.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from mmops.domain.ratelimit import TradingCounter
from tests.kraken_server import KrakenServer, kraken_signature

pytestmark = pytest.mark.integration

# Kraken's REST authentication guide, "Examples".
DOC_SECRET = (
    "kQH5HW/8p1uGOVjbgWA7FunAmGO8lsSUXNsu3eow76sz84Q18fWxnyRzBHCd3pd5nE9qa99HAZtuZuj6F1huXg=="
)
DOC_NONCE = "1616492376594"
DOC_PAYLOAD = "nonce=1616492376594&ordertype=limit&pair=XBTUSD&price=37500&type=buy&volume=1.25"
DOC_PATH = "/0/private/AddOrder"
DOC_SIGNATURE = (
    "4/dpxb3iT4tp/ZCVEwSnEsLxx0bqyhLpdfOpc6fn7OR8+UClSV5n9E6aSS8MPtnRfp32bAb0nmbRn6H8ndwLUQ=="
)


class Client:
    """Signed Kraken requests with urllib; nonces from a counter so they always increase."""

    def __init__(self, server: KrakenServer, key: str | None = None, secret: str | None = None):
        self.server = server
        self.key = key or server.api_key
        self.secret = secret or server.api_secret
        self.nonce = time.time_ns() // 1000

    def public(self, method: str, **query: str) -> dict[str, Any]:
        url = f"{self.server.url}/0/public/{method}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        with urllib.request.urlopen(url, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def private(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        as_json: bool = False,
        nonce: int | None = None,
        sign_with: str | None = None,
    ) -> dict[str, Any]:
        if nonce is None:
            self.nonce += 1
            nonce = self.nonce
        data = {"nonce": str(nonce), **(params or {})}
        body = json.dumps(data) if as_json else urllib.parse.urlencode(data)
        path = f"/0/private/{method}"
        request = urllib.request.Request(
            self.server.url + path,
            data=body.encode(),
            method="POST",
            headers={
                "API-Key": self.key,
                "API-Sign": kraken_signature(path, str(nonce), body, sign_with or self.secret),
                "Content-Type": "application/json"
                if as_json
                else "application/x-www-form-urlencoded",
            },
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())  # type: ignore[no-any-return]

    def order(
        self, price: str, volume: str = "0.01", side: str = "sell", **extra: str
    ) -> dict[str, str]:
        return {"type": side, "ordertype": "limit", "price": price, "volume": volume, **extra}

    def batch(self, orders: list[dict[str, str]], pair: str = "XXBTZUSD") -> dict[str, Any]:
        return self.private("AddOrderBatch", {"pair": pair, "orders": orders}, as_json=True)


@pytest.fixture
def server() -> Iterator[KrakenServer]:
    with KrakenServer() as s:
        s.set_quote("BTC/USD", "60000.0", "60010.0")
        yield s
        assert s.stats.errors == []


@pytest.fixture
def client(server: KrakenServer) -> Client:
    return Client(server)


def test_the_signature_is_the_one_in_krakens_authentication_guide() -> None:
    assert kraken_signature(DOC_PATH, DOC_NONCE, DOC_PAYLOAD, DOC_SECRET) == DOC_SIGNATURE


def test_a_correctly_signed_call_is_answered_in_krakens_shape(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1.5")
    answer = client.private("BalanceEx")
    assert answer == {
        "error": [],
        "result": {
            "XXBT": {
                "balance": "1.5000000000",
                "credit": "0.0000",
                "credit_used": "0.0000",
                "hold_trade": "0.0000000000",
            }
        },
    }


def test_a_bad_signature_is_refused_with_invalid_signature(
    server: KrakenServer, client: Client
) -> None:
    _, other_secret = server.new_key()
    answer = client.private("Balance", sign_with=other_secret)
    assert answer == {"error": ["EAPI:Invalid signature"]}


def test_an_unknown_key_is_refused_with_invalid_key(server: KrakenServer) -> None:
    stranger = Client(server, key="no-such-key", secret=server.api_secret)
    assert stranger.private("Balance") == {"error": ["EAPI:Invalid key"]}


def test_a_nonce_that_does_not_increase_is_refused_with_invalid_nonce(client: Client) -> None:
    assert client.private("Balance", nonce=1000)["error"] == []
    assert client.private("Balance", nonce=1000) == {"error": ["EAPI:Invalid nonce"]}
    assert client.private("Balance", nonce=999) == {"error": ["EAPI:Invalid nonce"]}
    assert client.private("Balance", nonce=1001)["error"] == []


def test_a_refused_signature_does_not_use_up_its_nonce(
    server: KrakenServer, client: Client
) -> None:
    _, other_secret = server.new_key()
    assert client.private("Balance", nonce=5000, sign_with=other_secret)["error"]
    assert client.private("Balance", nonce=5000)["error"] == []


def test_each_key_has_its_own_nonce_sequence(server: KrakenServer, client: Client) -> None:
    second = Client(server, *server.new_key())
    assert client.private("Balance", nonce=9000)["error"] == []
    assert second.private("Balance", nonce=10)["error"] == []


def test_asset_pairs_and_assets_use_krakens_codes_and_decimals(client: Client) -> None:
    pairs = client.public("AssetPairs")["result"]
    btc = pairs["XXBTZUSD"]
    assert (btc["altname"], btc["base"], btc["quote"]) == ("XBTUSD", "XXBT", "ZUSD")
    assert (btc["pair_decimals"], btc["lot_decimals"]) == (1, 8)
    assert (btc["ordermin"], btc["costmin"]) == ("0.0001", "0.5")
    assert (btc["fees_maker"][0][1], btc["fees"][0][1]) == (0.25, 0.4)
    assert pairs["XDGUSD"]["pair_decimals"] == 7
    assets = client.public("Assets")["result"]
    assert assets["XXBT"]["altname"] == "XBT" and assets["XXDG"]["altname"] == "XDG"


def test_the_ticker_quotes_the_bid_and_ask_that_were_set(client: Client) -> None:
    ticker = client.public("Ticker", pair="XXBTZUSD,XETHZUSD")["result"]
    assert set(ticker) == {"XXBTZUSD", "XETHZUSD"}
    assert ticker["XXBTZUSD"]["b"][0] == "60000.0" and ticker["XXBTZUSD"]["a"][0] == "60010.0"
    assert client.public("Ticker", pair="NOPE") == {"error": ["EQuery:Unknown asset pair"]}


def test_a_batch_places_good_orders_and_refuses_others_one_by_one(
    server: KrakenServer, client: Client
) -> None:
    server.post_only_cross = "reject"  # the reading where the engine refuses it per order
    server.fund("BTC", "0.25")
    answer = client.batch(
        [
            client.order("60100.0", "0.1", oflags="post", cl_ord_id="a"),
            client.order("60000.0", "0.1", oflags="post", cl_ord_id="b"),  # at the bid
            client.order("60200.0", "0.2", oflags="post", cl_ord_id="c"),  # 0.3 > 0.25
            client.order("60300.0", "0.1", oflags="post", cl_ord_id="d"),
        ]
    )
    assert answer["error"] == []
    orders = answer["result"]["orders"]
    assert [o.get("error") for o in orders] == [
        None,
        "EOrder:Post only order",
        "EOrder:Insufficient funds",
        None,
    ]
    assert orders[0]["descr"]["order"] == "sell 0.10000000 XBTUSD @ limit 60100.0"
    assert server.order(orders[0]["txid"])["cl_ord_id"] == "a"
    assert server.order(orders[3]["txid"])["oflags"] == "post"  # the flags as sent


def test_a_batch_with_an_order_below_the_minimum_is_refused_whole(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    answer = client.batch([client.order("60100.0"), client.order("60200.0", "0.00001")])
    assert answer == {"error": ["EOrder:Order minimum not met"]}
    assert server.stats.orders_accepted == 0


def test_an_order_below_the_minimum_cost_is_refused(server: KrakenServer, client: Client) -> None:
    server.fund("XRP", "10")
    answer = client.private("AddOrder", {"pair": "XXRPZUSD", **client.order("0.20000", "2")})
    assert answer == {"error": ["EOrder:Cost minimum not met"]}


def test_a_batch_holds_two_to_fifteen_orders_of_one_pair(client: Client) -> None:
    one = client.batch([client.order("60100.0")])
    sixteen = client.batch([client.order("60100.0") for _ in range(16)])
    assert one == sixteen == {"error": ["EGeneral:Invalid arguments:orders"]}


def test_a_price_finer_than_the_tick_is_refused(client: Client) -> None:
    answer = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("60100.05")})
    assert answer["error"][0].startswith("EOrder:Invalid price:XBTUSD")


def test_balance_ex_holds_what_open_orders_reserve_and_a_fill_moves_it(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    server.fund("USD", "1000")
    sell = client.private(
        "AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0", "0.2", oflags="fciq")}
    )
    client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("50000.0", "0.01", "buy")})
    assert server.balance("BTC") == (Decimal(1), Decimal("0.2"))
    assert server.balance("USD") == (Decimal(1000), Decimal(500))
    txid = sell["result"]["txid"][0]
    server.fill(txid, "0.05")
    assert server.balance("BTC") == (Decimal("0.95"), Decimal("0.15"))
    proceeds = Decimal("0.05") * 61000 * (1 - Decimal("0.0025"))
    assert server.balance("USD")[0] == 1000 + proceeds
    server.fill(txid)
    closed = client.private("QueryOrders", {"txid": txid})["result"][txid]
    assert (closed["status"], closed["vol_exec"]) == ("closed", "0.20000000")


def test_orders_are_found_by_cl_ord_id_open_or_closed(server: KrakenServer, client: Client) -> None:
    server.fund("BTC", "1")
    placed = client.private(
        "AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0", cl_ord_id="uuid-1")}
    )
    txid = placed["result"]["txid"][0]
    assert list(client.private("OpenOrders", {"cl_ord_id": "uuid-1"})["result"]["open"]) == [txid]
    assert client.private("OpenOrders", {"cl_ord_id": "uuid-2"})["result"]["open"] == {}
    assert client.private("CancelOrder", {"txid": txid})["result"] == {"count": 1}
    closed = client.private("ClosedOrders", {"cl_ord_id": "uuid-1"})["result"]["closed"]
    assert closed[txid]["status"] == "canceled"
    assert client.private("CancelOrder", {"txid": txid}) == {"error": ["EOrder:Unknown order"]}


def test_the_trading_counter_refuses_a_burst_over_its_threshold() -> None:
    with KrakenServer(counter=TradingCounter(threshold=5, decay=0.01)) as server:
        client = Client(server)
        server.fund("BTC", "1")
        answer = client.batch([client.order(f"{61000 + i}.0") for i in range(5)])
        assert all("txid" in o for o in answer["result"]["orders"])
        refused = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("62000.0")})
        assert refused == {"error": ["EOrder:Rate limit exceeded"]}
        other_pair = client.private(
            "AddOrder", {"pair": "XETHZUSD", **client.order("3100.00", "0.01", "buy")}
        )
        assert other_pair["error"] == ["EOrder:Insufficient funds"]  # its own counter
        assert server.stats.rate_limit_refusals == 1


def test_injected_faults_slow_every_call_and_fail_the_named_call_or_order(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    server.latency = 0.1
    started = time.monotonic()
    client.public("Time")
    assert time.monotonic() - started >= 0.1
    server.latency = 0.0
    server.fail_private_call(server.stats.private_calls + 1, "5xx")
    with pytest.raises(urllib.error.HTTPError) as failed:
        client.private("Balance")
    assert failed.value.code == 500
    failed.value.close()
    server.fail_private_call(server.stats.private_calls + 1, "unavailable")
    assert client.private("Balance") == {"error": ["EService:Unavailable"]}
    server.reject_order(server.stats.orders_received + 2, "EOrder:Insufficient funds")
    answer = client.batch([client.order("61000.0"), client.order("61001.0")])
    assert [o.get("error") for o in answer["result"]["orders"]] == [
        None,
        "EOrder:Insufficient funds",
    ]


def test_a_timeout_after_accept_records_the_order_and_answers_late(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    server.timeout_after_accept(server.stats.placements + 1, delay=0.5)
    started = time.monotonic()
    answer = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0")})
    assert time.monotonic() - started >= 0.5
    assert answer["error"] == [] and server.stats.orders_accepted == 1


def test_cancel_order_batch_cancels_by_txid_or_cl_ord_id_and_counts_them(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    placed = client.batch(
        [client.order("61000.0", cl_ord_id="x"), client.order("61001.0", userref="7")]
    )
    first, second = (o["txid"] for o in placed["result"]["orders"])
    assert list(client.private("OpenOrders", {"userref": "7"})["result"]["open"]) == [second]
    answer = client.private(
        "CancelOrderBatch", {"orders": ["x", second, "ONOPE1-ONOPE-ONOPE1"]}, as_json=True
    )
    assert answer == {"error": [], "result": {"count": 2}}
    assert server.order(first)["status"] == server.order(second)["status"] == "canceled"
    assert server.balance("BTC") == (Decimal(1), Decimal(0))


def deadline_in(server: KrakenServer, seconds: float) -> str:
    """An RFC3339 deadline ``seconds`` from the server's now, to the millisecond, in UTC."""
    moment = datetime.fromtimestamp(server.now(), UTC) + timedelta(seconds=seconds)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_a_deadline_in_the_window_is_accepted_alone_and_top_level_in_a_batch(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    alone = client.private(
        "AddOrder",
        {"pair": "XXBTZUSD", "deadline": deadline_in(server, 30), **client.order("61000.0")},
    )
    assert alone["error"] == []
    batch = client.private(
        "AddOrderBatch",
        {
            "pair": "XXBTZUSD",
            "deadline": deadline_in(server, 3),
            "orders": [client.order("61001.0"), client.order("61002.0")],
        },
        as_json=True,
    )
    assert batch["error"] == [] and all("txid" in o for o in batch["result"]["orders"])
    assert server.stats.orders_accepted == 3


def test_a_request_that_arrives_after_its_deadline_is_rejected_by_the_engine_and_charged() -> None:
    with KrakenServer(counter=TradingCounter(threshold=3, decay=0.01)) as server:
        client = Client(server)
        server.fund("BTC", "1")
        deadline = deadline_in(server, 5)
        server.advance(6)  # held up on the way for longer than its deadline allowed
        late = client.private(
            "AddOrderBatch",
            {
                "pair": "XXBTZUSD",
                "deadline": deadline,
                "orders": [client.order("61000.0"), client.order("61001.0")],
            },
            as_json=True,
        )
        assert late == {"error": ["EService:Deadline elapsed"]}
        alone = client.private(
            "AddOrder", {"pair": "XXBTZUSD", "deadline": deadline, **client.order("61000.0")}
        )
        assert alone == {"error": ["EService:Deadline elapsed"]}
        assert server.stats.orders_accepted == 0 and server.stats.deadline_refusals == 2
        # Both reached the engine: their three orders filled the pair's counter.
        refused = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("62000.0")})
        assert refused == {"error": ["EOrder:Rate limit exceeded"]}


@pytest.mark.parametrize(
    "deadline",
    [
        lambda s: deadline_in(s, 1),  # closer than now + 2 s
        lambda s: deadline_in(s, 61),  # further than now + 60 s
        lambda s: "tomorrow",
        lambda s: "2026-11-26T06:30:15",  # no time zone
    ],
    ids=["too-soon", "too-far", "garbage", "naive"],
)
def test_a_deadline_outside_the_window_is_refused_whole_and_not_charged(
    deadline: Any,
) -> None:
    with KrakenServer(counter=TradingCounter(threshold=2, decay=0.01)) as server:
        client = Client(server)
        server.fund("BTC", "1")
        value = deadline(server)
        alone = client.private(
            "AddOrder", {"pair": "XXBTZUSD", "deadline": value, **client.order("61000.0")}
        )
        orders = [client.order("61001.0"), client.order("61002.0")]
        batch = client.private(
            "AddOrderBatch",
            {"pair": "XXBTZUSD", "deadline": value, "orders": orders},
            as_json=True,
        )
        assert alone == batch == {"error": ["EGeneral:Invalid arguments:deadline"]}
        assert server.stats.orders_accepted == 0
        placed = client.batch(orders)  # the counter was not charged: two orders still fit
        assert all("txid" in o for o in placed["result"]["orders"])


def test_the_gateway_variant_refuses_an_elapsed_deadline_as_an_invalid_argument() -> None:
    with KrakenServer(deadline_errors="gateway") as server:
        client = Client(server)
        server.fund("BTC", "1")
        deadline = deadline_in(server, 5)
        server.advance(6)
        answer = client.private(
            "AddOrder", {"pair": "XXBTZUSD", "deadline": deadline, **client.order("61000.0")}
        )
        assert answer == {"error": ["EGeneral:Invalid arguments:deadline"]}
        assert server.stats.orders_accepted == 0


def test_a_cl_ord_id_is_unique_among_open_orders_only(server: KrakenServer, client: Client) -> None:
    server.fund("BTC", "1")

    def add(price: str) -> dict[str, Any]:
        return client.private(
            "AddOrder", {"pair": "XXBTZUSD", **client.order(price, cl_ord_id="uuid-1")}
        )

    first = add("61000.0")["result"]["txid"][0]
    assert add("61001.0") == {"error": ["EOrder:Duplicate order"]}
    assert client.private("CancelOrder", {"cl_ord_id": "uuid-1"})["result"] == {"count": 1}
    second = add("61002.0")["result"]["txid"][0]
    server.advance(1)
    server.fill(second)
    third = add("61003.0")["result"]["txid"][0]
    # A cancel by cl_ord_id reaches the open order, not the closed ones that share its id.
    assert client.private("CancelOrder", {"cl_ord_id": "uuid-1"})["result"] == {"count": 1}
    assert [server.order(t)["status"] for t in (first, second, third)] == [
        "canceled",
        "closed",
        "canceled",
    ]


def test_the_ever_variant_refuses_a_cl_ord_id_any_order_had() -> None:
    with KrakenServer(client_ids="ever") as server:
        client = Client(server)
        server.fund("BTC", "1")
        order = client.order("61000.0", cl_ord_id="uuid-1")
        txid = client.private("AddOrder", {"pair": "XXBTZUSD", **order})["result"]["txid"][0]
        client.private("CancelOrder", {"txid": txid})
        again = client.private("AddOrder", {"pair": "XXBTZUSD", **order})
        assert again == {"error": ["EOrder:Duplicate order"]}


def test_closed_orders_come_most_recent_first(server: KrakenServer, client: Client) -> None:
    server.fund("BTC", "1")
    txids = []
    for price in ("61000.0", "61001.0", "61002.0"):
        placed = client.private(
            "AddOrder", {"pair": "XXBTZUSD", **client.order(price, cl_ord_id="uuid-1")}
        )
        txids.append(placed["result"]["txid"][0])
        server.advance(1)
        client.private("CancelOrder", {"txid": txids[-1]})
    closed = client.private("ClosedOrders", {"cl_ord_id": "uuid-1"})["result"]
    assert list(closed["closed"]) == txids[::-1] and closed["count"] == 3


def test_a_sell_pays_its_fee_in_base_unless_oflags_asks_for_quote(
    server: KrakenServer, client: Client
) -> None:
    """Kraken's ``oflags``: fcib (fee in base) is the default when selling."""
    server.fund("BTC", "1")
    plain = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0", "0.1")})
    server.fill(plain["result"]["txid"][0])
    assert server.balance("BTC")[0] == 1 - Decimal("0.1") * (1 + Decimal("0.0025"))
    assert server.balance("USD")[0] == Decimal("0.1") * 61000
    quoted = client.private(
        "AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0", "0.1", oflags="post,fciq")}
    )
    txid = quoted["result"]["txid"][0]
    assert server.order(txid)["oflags"] == "post,fciq"
    server.fill(txid)
    assert server.balance("BTC")[0] == 1 - Decimal("0.1") * (2 + Decimal("0.0025"))
    assert server.balance("USD")[0] == Decimal("0.2") * 61000 * (1 - Decimal("0.0025") / 2)


def test_balance_ex_lists_credit_and_rewards_balances(server: KrakenServer, client: Client) -> None:
    server.fund("BTC", "1")
    server.fund("BTC.F", "0.5")
    server.set_credit("USD", "100", "40")
    result = client.private("BalanceEx")["result"]
    assert result["XBT.F"]["balance"] == "0.5000000000"
    assert (result["ZUSD"]["credit"], result["ZUSD"]["credit_used"]) == ("100.0000", "40.0000")


def test_a_sell_may_spend_the_rewards_balance_of_its_base_asset(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC.F", "0.5")
    placed = client.private(
        "AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0", "0.3", oflags="fciq")}
    )
    assert placed["error"] == []
    server.fill(placed["result"]["txid"][0])
    assert client.private("BalanceEx")["result"]["XBT.F"]["balance"] == "0.2000000000"


def test_a_pair_lists_its_status_and_a_tick_size_apart_from_pair_decimals(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    server.set_pair("BTC/USD", status="post_only", tick_size="0.5")
    info = client.public("AssetPairs", pair="XXBTZUSD")["result"]["XXBTZUSD"]
    assert (info["status"], info["tick_size"], info["pair_decimals"]) == ("post_only", "0.5", 1)
    off_grid = client.order("61000.3", oflags="post")
    refused = client.private("AddOrder", {"pair": "XXBTZUSD", **off_grid})
    assert refused["error"] == ["EGeneral:Invalid arguments:price"]
    taker = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61000.5")})
    assert taker["error"] == ["EService:Market in post_only mode"]
    maker = client.order("61000.5", oflags="post")
    assert client.private("AddOrder", {"pair": "XXBTZUSD", **maker})["error"] == []
    server.set_pair("BTC/USD", status="cancel_only")
    closed = client.private("AddOrder", {"pair": "XXBTZUSD", **maker})
    assert closed["error"] == ["EService:Market in cancel_only mode"]


def test_the_rest_counter_refuses_past_the_tiers_max_and_decays() -> None:
    """Starter: max 15, -0.33/s; order calls do not count."""
    now = [0.0]
    with KrakenServer(rest_tier="starter", monotonic=lambda: now[0]) as server:
        client = Client(server)
        server.fund("BTC", "1")
        answers = [client.private("Balance")["error"] for _ in range(16)]
        assert answers == [[]] * 15 + [["EAPI:Rate limit exceeded"]]
        placed = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0")})
        assert placed["error"] == []
        now[0] += 3.1
        assert client.private("Balance")["error"] == []
        assert (server.stats.rest_refusals, server.stats.rest_peak) == (1, 15)


def test_too_many_concurrent_requests_are_throttled_with_a_retry_time(
    server: KrakenServer, client: Client
) -> None:
    server.fail_private_call(server.stats.private_calls + 1, "throttled")
    [error] = client.private("Balance")["error"]
    assert error.startswith("EService:Throttled: ")
    assert int(error.rsplit(" ", 1)[1]) > server.now()


@pytest.fixture
def roomy() -> Iterator[KrakenServer]:
    """A server whose trading counter lets a test close many orders at once."""
    with KrakenServer(counter=TradingCounter(threshold=10_000)) as s:
        s.set_quote("BTC/USD", "60000.0", "60010.0")
        yield s
        assert s.stats.errors == []


def close_orders(server: KrakenServer, client: Client, count: int, **extra: str) -> list[str]:
    """Place ``count`` sells (15 a batch) and fill each, a second apart; their txids in order."""
    server.fund("BTC", Decimal("0.02") * count)  # each fill also pays its fee in BTC
    txids: list[str] = []
    for first in range(0, count, 15):
        size = min(15, count - first)
        orders = [client.order(f"{61000 + i}.0", **extra) for i in range(size)]
        answers = client.batch(orders)["result"]["orders"] if size > 1 else None
        if answers is None:
            placed = client.private("AddOrder", {"pair": "XXBTZUSD", **orders[0]})
            answers = [{"txid": placed["result"]["txid"][0]}]
        for answer in answers:
            server.fill(answer["txid"])
            server.advance(1)
            txids.append(answer["txid"])
    return txids


def test_closed_orders_come_50_a_page_newest_first_from_ofs_with_the_full_count(
    roomy: KrakenServer,
) -> None:
    client = Client(roomy)
    txids = close_orders(roomy, client, 120)
    pages = [client.private("ClosedOrders", {"ofs": ofs})["result"] for ofs in (0, 50, 100)]
    assert [len(p["closed"]) for p in pages] == [50, 50, 20]
    assert all(p["count"] == 120 for p in pages)
    assert [t for p in pages for t in p["closed"]] == txids[::-1]
    assert client.private("ClosedOrders", {"ofs": 120})["result"] == {"closed": {}, "count": 120}
    bad = client.private("ClosedOrders", {"ofs": "-1"})
    assert bad == {"error": ["EGeneral:Invalid arguments:ofs"]}


def test_closed_orders_take_start_exclusive_and_end_inclusive_times_or_txids(
    roomy: KrakenServer,
) -> None:
    client = Client(roomy)
    txids = close_orders(roomy, client, 4)
    closetm = [roomy.order(t)["closetm"] for t in txids]
    window = {"start": str(closetm[0]), "end": str(closetm[2]), "closetime": "close"}
    assert list(client.private("ClosedOrders", window)["result"]["closed"]) == txids[2:0:-1]
    # A txid stands for its order's opentm: all four opened before the last one's close.
    by_txid = {"start": txids[0], "closetime": "close"}
    assert client.private("ClosedOrders", by_txid)["result"]["count"] == 4


def test_the_closed_orders_cl_ord_id_filter_is_a_switch(roomy: KrakenServer) -> None:
    client = Client(roomy)
    close_orders(roomy, client, 3)
    [mine] = close_orders(roomy, client, 1, cl_ord_id="uuid-1")
    assert list(client.private("ClosedOrders", {"cl_ord_id": "uuid-1"})["result"]["closed"]) == [
        mine
    ]
    with KrakenServer(closed_cl_ord_id_filter=False) as unfiltered:
        unfiltered.set_quote("BTC/USD", "60000.0", "60010.0")
        other = Client(unfiltered)
        close_orders(unfiltered, other, 3)
        close_orders(unfiltered, other, 1, cl_ord_id="uuid-1")
        answer = other.private("ClosedOrders", {"cl_ord_id": "uuid-1"})["result"]
        assert answer["count"] == 4


def test_query_orders_takes_txids_and_applies_no_cl_ord_id_filter(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    order = client.order("61000.0", cl_ord_id="uuid-1")
    txid = client.private("AddOrder", {"pair": "XXBTZUSD", **order})["result"]["txid"][0]
    answer = client.private("QueryOrders", {"txid": txid, "cl_ord_id": "uuid-2"})["result"]
    assert list(answer) == [txid] and answer[txid]["cl_ord_id"] == "uuid-1"


def test_trades_history_is_paged_newest_first_and_costs_two_on_the_rest_counter() -> None:
    now = [0.0]
    counter = TradingCounter(threshold=10_000)
    with KrakenServer(counter=counter, rest_tier="starter", monotonic=lambda: now[0]) as server:
        server.set_quote("BTC/USD", "60000.0", "60010.0")
        client = Client(server)
        txids = close_orders(server, client, 60)
        first = client.private("TradesHistory")["result"]
        assert (len(first["trades"]), first["count"]) == (50, 60)
        ordered = [t["ordertxid"] for t in first["trades"].values()]
        ordered += [
            t["ordertxid"]
            for t in client.private("TradesHistory", {"ofs": 50})["result"]["trades"].values()
        ]
        assert ordered == txids[::-1]
        assert server.stats.rest_peak == 4  # two calls, 2 each; placing costs nothing
        newest = next(iter(first["trades"].values()))
        assert newest["vol"] == "0.01000000" and newest["type"] == "sell"


def test_cancel_all_orders_after_cancels_every_open_order_when_the_timer_expires(
    server: KrakenServer, client: Client
) -> None:
    server.fund("BTC", "1")
    orders = [client.order(f"{61000 + i}.0") for i in range(3)]
    txids = [a["txid"] for a in client.batch(orders)["result"]["orders"]]
    armed = client.private("CancelAllOrdersAfter", {"timeout": 60})["result"]
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    set_at = datetime.strptime(armed["currentTime"], fmt)
    assert datetime.strptime(armed["triggerTime"], fmt) - set_at == timedelta(seconds=60)
    server.advance(30)
    client.private("CancelAllOrdersAfter", {"timeout": 60})  # pushed back: 90 s from the start
    server.advance(45)
    assert len(client.private("OpenOrders")["result"]["open"]) == 3
    server.advance(16)
    assert client.private("OpenOrders")["result"]["open"] == {}
    assert {server.order(t)["status"] for t in txids} == {"canceled"}
    # Once fired the timer is off: a new order stays.
    placed = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61100.0")})
    server.advance(600)
    assert server.order(placed["result"]["txid"][0])["status"] == "open"


def test_a_timeout_of_0_disables_the_dead_mans_switch(server: KrakenServer, client: Client) -> None:
    server.fund("BTC", "1")
    placed = client.private("AddOrder", {"pair": "XXBTZUSD", **client.order("61000.0")})
    client.private("CancelAllOrdersAfter", {"timeout": 10})
    assert client.private("CancelAllOrdersAfter", {"timeout": 0})["result"]["triggerTime"] == "0"
    server.advance(60)
    assert server.order(placed["result"]["txid"][0])["status"] == "open"
    too_long = client.private("CancelAllOrdersAfter", {"timeout": 86400})
    assert too_long == {"error": ["EGeneral:Invalid arguments:timeout"]}


def test_get_websockets_token_answers_a_token_and_its_expiry(client: Client) -> None:
    answer = client.private("GetWebSocketsToken")["result"]
    assert answer["expires"] == 900 and len(answer["token"]) >= 40
