"""A local Kraken REST server for tests: real HTTP on 127.0.0.1, state in memory.

It speaks enough of Kraken's REST API for ccxt's ``kraken`` (``load_markets``,
``fetch_tickers``, balances, AddOrder / AddOrderBatch, cancels and order queries) and answers in
Kraken's ``{"error": [...], "result": ...}`` shape with Kraken's error strings. Private calls
are checked like Kraken checks them: ``API-Key`` must be known, ``API-Sign`` must be the
HMAC-SHA512 of (URI path + SHA256(nonce + POST body)) under the base64-decoded secret, and
nonces must strictly increase per key. Several keys may share the one account
(:meth:`KrakenServer.new_key`), as several processes each with their own key would.

Markets come from the paper catalog (Kraken pair and asset codes). Orders are post-only
aware, hold what they reserve (a sell its base, a buy price * amount of quote), respect
ordermin / costmin and the pair's tick, and each pair has Kraken's trading counter
(:class:`~mmops.domain.ratelimit.TradingCounter`). AddOrderBatch validates the whole batch
first (one bad order refuses the batch) and then refuses single orders for funds or post-only,
placing the rest — as Kraken documents.

Kraken as documented, each behaviour with its source:

* ``deadline`` on AddOrder and AddOrderBatch (one, top-level, for the whole batch): "RFC3339
  timestamp (e.g. 2021-04-01T00:18:45Z) after which the matching engine should reject the new
  order request, in presence of latency or order queueing. min now() + 2 seconds, max now() +
  60 seconds." (https://docs.kraken.com/api-reference/trading/add-order,
  https://docs.kraken.com/api-reference/trading/add-order-batch). The documentation does not
  say which error each case answers; the switch ``deadline_errors`` models the two readings:

  - ``"engine"`` (default): a request that arrives at or after its deadline is rejected by the
    matching engine with ``EService:Deadline elapsed`` (Kraken's spot error list, as catalogued
    from https://docs.kraken.com/api/docs/guides/spot-errors/ — "EService:Deadline elapsed");
    it reached the engine, so the pair's trading counter is charged. A deadline still ahead but
    outside the window is refused whole as ``EGeneral:Invalid arguments:deadline``, uncharged
    (argument validation, like every ``EGeneral:Invalid arguments:*``);
  - ``"gateway"``: every deadline outside the window, elapsed ones included, is refused as
    ``EGeneral:Invalid arguments:deadline`` before the engine, uncharged.

  Either way nothing is placed.
* ``cl_ord_id``: "Kraken verifies cl_ord_id uniqueness across open orders for each client"
  (https://docs.kraken.com/api/docs/guides/spot-clordid): a filled or cancelled order frees its
  id (``client_ids="open"``, the default); ``"ever"`` refuses an id any order ever had, the
  stricter rule some venues keep. A duplicate is refused as ``EOrder:Duplicate order``.
* ``ClosedOrders``: "50 results are returned at a time, the most recent by default"
  (https://docs.kraken.com/api-reference/account-data/get-closed-orders): newest first (by close
  time), 50 from offset ``ofs``, ``count`` the number of all that match; ``start`` exclusive and
  ``end`` inclusive, each a Unix time or a txid ("If an order's tx ID is given for start or end
  time, the order's opening time (opentm) is used"), against the time ``closetime`` names
  (``open``, ``close``, ``both``: either, the default). The ``cl_ord_id`` filter: the current
  reference lists it in ClosedOrders' request, older references and clients list only
  ``trades``, ``userref``, ``start``, ``end``, ``ofs``, ``closetime``
  (https://docs.kraken.com/api/docs/rest-api/get-closed-orders; kraapi's and kraken_client's
  ClosedOrders builders), so switch ``closed_cl_ord_id_filter`` (default True: applied; False:
  ignored, every closed order comes back).
* ``QueryOrders`` takes ``txid`` ("Comma delimited list of transaction IDs to query info
  about (50 maximum)"), ``trades``, ``userref``, ``consolidate_taker`` and no ``cl_ord_id``
  (https://docs.kraken.com/api-reference/account-data/query-orders-info,
  https://docs.kraken.com/api/docs/rest-api/get-orders-info agree): a ``cl_ord_id`` sent along
  filters nothing. With ``trades=true`` an order that traded lists its trades' txids
  (``trades``); ``QueryTrades`` answers those trades by txid ("20 maximum"), in
  TradesHistory's shape (https://docs.kraken.com/api-reference/account-data/get-trades-info).
* ``TradesHistory``: "50 results are returned at a time, the most recent by default"
  (https://docs.kraken.com/api-reference/account-data/get-trades-history): one trade per
  :meth:`fill`, newest first, ``ofs`` / ``start`` / ``end`` as for ClosedOrders (against the
  trade's ``time``; a txid stands for its trade's time), answered as ``{"trades": ...,
  "count": n}``. It costs +2 on the REST call counter (``rest_tier``, below).
* ``CancelAllOrdersAfter``, the dead man's switch: "a timeout (in seconds), that will start a
  countdown timer which will cancel *all* client orders when the timer expires ... deactivate
  the mechanism by specifying a timeout of 0. If the timer expires, all orders are cancelled
  and then the timer remains disabled until the client provides a new (non-zero) timeout";
  ``timeout`` "should be less than 86400 seconds"; answers ``currentTime`` and ``triggerTime``
  (RFC3339) (https://docs.kraken.com/api-reference/trading/cancel-all-orders-after-x,
  https://docs.kraken.com/api/docs/rest-api/cancel-all-orders-after). It runs on the server's
  clock (:meth:`advance`) and fires when the clock is next looked at (a private call,
  :meth:`advance`, :meth:`order`, :meth:`orders`), closing every open order at the trigger
  time. Assumptions, undocumented: a disabling call answers ``triggerTime`` ``"0"``, the
  cancelled orders carry reason ``"Dead man's switch"``, and the engine's cancels are not
  charged to the trading counter.
* ``GetWebSocketsToken`` answers ``{"token": ..., "expires": 900}``: "The token should be used
  within 15 minutes of creation" (https://docs.kraken.com/api-reference/trading/get-websockets-token;
  the example answer carries ``"expires": 900``). Issued tokens are remembered for the
  WebSocket below.
* WebSocket v2, private (``ws_url``: ``ws://127.0.0.1:<port>/v2``, Kraken's
  ``wss://ws-auth.kraken.com/v2``): a ``status`` update on connect ("automatically generated
  on successful websocket connection", ``system``, ``api_version``, ``connection_id``,
  ``version``: https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/status);
  ``subscribe`` to
  ``executions`` needs a ``token`` this server issued within the last 900 s ("The token should
  be used within 15 minutes of creation, but it does not expire once a successful Websockets
  connection and private subscription has been made and is maintained",
  https://docs.kraken.com/api-reference/trading/get-websockets-token). The ack is the
  documented ``{"method": "subscribe", "result": {"channel": "executions", "maxratecount":
  125, "snap_orders": ..., "snap_trades": ...}, "success": true, "time_in", "time_out"}``
  (https://docs.kraken.com/api/docs/websocket-v2/executions), echoing ``req_id``; a missing,
  unknown or stale token answers ``success: false`` with ``error`` "ESession:Invalid session"
  (the string ccxt pro's Kraken error table maps to AuthenticationError; Kraken support, as
  quoted in https://github.com/knowm/XChange/pull/3697: the fix for "invalid session" is a
  new token), and the connection stays open. ``ping`` answers ``pong``
  (https://docs.kraken.com/exchange/api-reference/spot-websocket-v2/ping). ``heartbeat``
  messages go out "approximately once every second in the absence of any other channel
  updates" once a channel is subscribed (https://docs.kraken.com/api/docs/websocket-v2/
  heartbeat/; ``ws_heartbeat`` seconds, None: silent). Every :meth:`fill` pushes one
  ``executions`` ``update`` with an ``exec_type`` ``trade`` entry (fields of the documented
  execution example: ``exec_id`` the trade txid TradesHistory keys the same trade by,
  ``order_id``, ``cl_ord_id``, ``symbol`` in v2's ``BTC/USD`` form, ``side``, ``last_qty``,
  ``last_price``, ``cost``, ``fees`` ``[{"asset", "qty"}]`` in the asset the fee was taken in,
  ``liquidity_ind`` ``m``, ``order_status``, ``timestamp`` RFC 3339), numbers as JSON numbers
  as Kraken sends them. Controls: :meth:`drop_websockets` cuts every connection without a
  close frame; :meth:`pause_executions` stops pushing fills (they still reach TradesHistory:
  fills "during a gap"); :meth:`ws_subscribers` counts live subscriptions.
* A post-only order that would cross (switch ``post_only_cross``). Kraken's AddOrder reference
  lists ``EOrder:Post only order``; independent clients report that the order is *accepted*
  (a txid comes back) and the engine then cancels it with reason "Post only order"
  (kraken-infinity-grid: "orders canceled by Kraken due to post-only",
  https://github.com/btschwertfeger/kraken-infinity-grid/pull/59; ccxt's AddOrder answer
  carries no status, https://github.com/ccxt/ccxt/pull/18389). ``"cancel"`` (default): accepted,
  then closed ``canceled`` with that reason, nothing held; ``"reject"``: refused per order.
* ``CancelOrder`` answers ``count`` and ``pending``: "if set, order(s) is/are pending
  cancellation" (https://docs.kraken.com/api-reference/trading/cancel-order). With
  ``cancel_pending=True`` a cancel answers ``pending: true`` and the order stays open (holding,
  fillable) until :meth:`settle_cancels`; a further cancel answers pending again.
* ``AmendOrder`` changes an open order in place: "The order identifiers assigned by Kraken
  and/or client will stay the same. Queue priority in the order book will be maintained where
  possible." (https://docs.kraken.com/api-reference/trading/amend-order,
  https://docs.kraken.com/api/docs/guides/spot-amends/). By ``txid`` or ``cl_ord_id``, with
  ``limit_price`` and/or ``order_qty``; ``post_only=true`` refuses a crossing amend
  (``EOrder:Post only order``, the order unchanged); answers ``{"amend_id": ...}``. Its cost on
  the trading counter is not modelled (Kraken documents it as below cancel + add).

* Pair ``status`` "online | cancel_only | post_only | limit_only | reduce_only" and a
  ``tick_size`` apart from ``pair_decimals`` (AssetPairs,
  https://docs.kraken.com/api-reference/market-data/get-tradable-asset-pairs); :meth:`set_pair`
  changes them. A price off the ``tick_size`` grid is refused as
  ``EGeneral:Invalid arguments:price``. An order a mode does not admit is refused as
  ``EService:Market in <mode> mode`` (the strings ccxt's Kraken error table records for
  ``post_only`` and ``cancel_only``; ``reduce_only``'s, by analogy, is an assumption).
* ``BalanceEx``: ``balance``, ``credit``, ``credit_used``, ``hold_trade``; "available balance =
  balance + credit - credit_used - hold_trade", and ``.F`` assets ("balances earning
  automatically in Kraken Rewards") are spent through their base asset
  (https://docs.kraken.com/api-reference/account-data/get-extended-balance). :meth:`fund`
  takes ``XBT.F``-style codes; :meth:`set_credit` sets an asset's credit.
* The REST call counter per API key (switch ``rest_tier``: None, the default, counts nothing):
  "Ledger/trade history calls increase the counter by 2. All other API calls increase this
  counter by 1 (except AddOrder, CancelOrder ...)", Starter max 15 decaying 0.33/s,
  Intermediate 20 / 0.5, Pro 20 / 1; past the max "EAPI:Rate limit exceeded"; "EService:
  Throttled: [UNIX timestamp]" if there are too many concurrent requests (switch
  ``max_concurrent``, None: unlimited; or :meth:`fail_private_call` with ``"throttled"``)
  (https://docs.kraken.com/api/docs/guides/spot-rest-ratelimits). ``stats.rest_peak`` is the
  highest value any key's counter reached.
* Fees in the currency ``oflags`` asks for: "fcib: prefer fee in base currency (default if
  selling)", "fciq: prefer fee in quote currency (default if buying)"
  (https://docs.kraken.com/api-reference/trading/add-order, ``oflags``); a fill charges the fee
  accordingly, and the order echoes the flags it was sent.

The server's clock is the host's plus :meth:`advance` (a test moves it to make a request
arrive after its deadline); the trading and REST counters read ``monotonic`` (default
``time.monotonic``; a test passes a simulated one to let them decay at once).

Test controls: :meth:`fund`, :meth:`set_quote`, :meth:`fill`, :meth:`advance`; faults like the
paper venue's:
``latency``, :meth:`fail_private_call`, :meth:`reject_order`, :meth:`timeout_after_accept`.
Counts (``private_calls``, ``placements``, ``orders_received``...) are from 1 since start.

Usage::

    with KrakenServer() as server:          # or server = KrakenServer().start(); server.stop()
        exchange = make_ccxt_exchange(server)
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from email.utils import formatdate
from typing import Any, Literal
from urllib.parse import parse_qsl

from aiohttp import WSMsgType, web

from mmops.adapters.exchanges.ccxt_exchange import CcxtExchange
from mmops.adapters.paper.catalog import CATALOG, Listing
from mmops.domain.exchange import DEADLINE_MAX_AHEAD, DEADLINE_MIN_AHEAD
from mmops.domain.ratelimit import (
    KRAKEN_TIERS,
    CounterState,
    TradingCounter,
    cancel_penalty,
    rest_cost,
)
from mmops.domain.rounding import round_price_down, round_price_up

LOT_DECIMALS = 8
MAX_BATCH = 15
FIAT = frozenset({"USD", "EUR"})
_ALTNAMES = {"BTC": "XBT", "DOGE": "XDG"}  # unified code → Kraken altname, where they differ
_HALF_SPREAD = Decimal("0.0005")
Params = dict[str, Any]
ClientIds = Literal["open", "ever"]
DeadlineErrors = Literal["engine", "gateway"]
PostOnlyCross = Literal["cancel", "reject"]
DEADLINE_ELAPSED = "EService:Deadline elapsed"
DEADLINE_INVALID = "EGeneral:Invalid arguments:deadline"
REWARDS = ".F"  # Kraken Rewards balances (BalanceEx), spent through their base asset
PAIR_STATUSES = ("online", "cancel_only", "post_only", "limit_only", "reduce_only")
PAGE = 50  # ClosedOrders and TradesHistory answer 50 at a time (module docstring)
QUERY_ORDERS_MAX = 50  # QueryOrders: "50 maximum" txids (module docstring)
QUERY_TRADES_MAX = 20  # QueryTrades: "20 maximum" txids
DEAD_MAN_MAX = 86400  # CancelAllOrdersAfter: timeout "less than 86400 seconds"
DEAD_MAN_REASON = "Dead man's switch"  # assumed; Kraken does not document the reason string
WS_TOKEN_EXPIRES = 900  # GetWebSocketsToken: seconds to use the token in
WS_INVALID_SESSION = "ESession:Invalid session"  # a subscribe with a token not (or no longer) ok


class KrakenError(Exception):
    """A refusal, answered as ``{"error": [str(self)]}``."""


def kraken_signature(url_path: str, nonce: str, post_data: str, secret_b64: str) -> str:
    """Kraken's ``API-Sign``: HMAC-SHA512(path + SHA256(nonce + body)), base64 secret and result."""
    digest = hashlib.sha256((nonce + post_data).encode()).digest()
    mac = hmac.new(base64.b64decode(secret_b64), url_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def _decimals(step: Decimal) -> int:
    return max(0, -int(step.normalize().as_tuple().exponent))


def _places(value: Decimal) -> int:
    return max(0, -int(value.normalize().as_tuple().exponent))


def _fmt(value: Decimal, places: int) -> str:
    return f"{value:.{places}f}"


@dataclass
class Pair:
    """One market as the server lists it."""

    listing: Listing
    altname: str
    bid: Decimal
    ask: Decimal
    status: str = "online"
    tick_size: Decimal | None = None  # None: the listing's tick (a power of ten)

    @property
    def tick(self) -> Decimal:
        return self.tick_size or self.listing.market.tick

    @property
    def id(self) -> str:
        return self.listing.kraken_pair

    @property
    def decimals(self) -> int:
        return _decimals(self.listing.market.tick)

    def price(self, value: Decimal) -> str:
        return _fmt(value, self.decimals)


@dataclass
class Spec:
    """One order as requested."""

    side: str
    price: Decimal
    volume: Decimal
    oflags: str = ""
    cl_ord_id: str | None = None
    userref: int | None = None

    @property
    def post_only(self) -> bool:
        return "post" in self.oflags.split(",")


@dataclass
class ServerOrder:
    txid: str
    pair: Pair
    spec: Spec
    opentm: float
    status: str = "open"
    vol_exec: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    closetm: float | None = None
    reason: str | None = None
    cancel_pending: bool = False  # a CancelOrder answered pending; still open until settled

    @property
    def remaining(self) -> Decimal:
        return self.spec.volume - self.vol_exec

    @property
    def description(self) -> str:
        return _describe(self.pair, self.spec)

    def info(self) -> dict[str, Any]:
        s = self.spec
        average = self.cost / self.vol_exec if self.vol_exec else Decimal(0)
        info: dict[str, Any] = {
            "refid": None,
            "userref": s.userref,
            "cl_ord_id": s.cl_ord_id,
            "status": self.status,
            "reason": self.reason,
            "opentm": self.opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": self.pair.altname,
                "type": s.side,
                "ordertype": "limit",
                "price": self.pair.price(s.price),
                "price2": "0",
                "leverage": "none",
                "order": self.description,
                "close": "",
            },
            "vol": _fmt(s.volume, LOT_DECIMALS),
            "vol_exec": _fmt(self.vol_exec, LOT_DECIMALS),
            "cost": _fmt(self.cost, 5),
            "fee": _fmt(self.fee, 5),
            "price": self.pair.price(average),
            "stopprice": "0.00000",
            "limitprice": "0.00000",
            "misc": "",
            "oflags": s.oflags,
        }
        if self.closetm is not None:
            info["closetm"] = self.closetm
        return info


@dataclass
class Stats:
    calls: Counter[str] = field(default_factory=Counter)  # per endpoint (private: authenticated)
    private_calls: int = 0
    placements: int = 0  # AddOrder / AddOrderBatch calls
    orders_received: int = 0  # orders in those calls; the numbering of reject_order
    orders_accepted: int = 0
    rate_limit_refusals: int = 0  # calls refused by the trading counter
    rest_refusals: int = 0  # calls refused by the REST call counter (rest_tier)
    rest_peak: float = 0.0  # the highest value a key's REST call counter reached
    throttled: int = 0  # calls answered EService:Throttled
    deadline_refusals: int = 0  # placement calls refused for their deadline
    placement_params: list[Params] = field(default_factory=list)  # each AddOrder(Batch), as sent
    errors: list[str] = field(default_factory=list)  # server bugs (tracebacks), should stay empty


class KrakenServer:
    """Kraken's REST API on an ephemeral port of 127.0.0.1, served from a background thread.

    ``client_ids``, ``deadline_errors``, ``post_only_cross`` and ``closed_cl_ord_id_filter``
    choose between readings of Kraken's documentation (module docstring); the defaults are the
    documented ones.
    """

    def __init__(
        self,
        counter: TradingCounter | None = None,
        listings: Iterable[Listing] = CATALOG,
        api_key: str | None = None,
        api_secret: str | None = None,
        *,
        client_ids: ClientIds = "open",
        deadline_errors: DeadlineErrors = "engine",
        post_only_cross: PostOnlyCross = "cancel",
        cancel_pending: bool = False,
        rest_tier: str | None = None,
        max_concurrent: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        closed_cl_ord_id_filter: bool = True,
    ) -> None:
        if client_ids not in ("open", "ever") or deadline_errors not in ("engine", "gateway"):
            raise ValueError(f"unknown variant: {client_ids!r}, {deadline_errors!r}")
        if post_only_cross not in ("cancel", "reject"):
            raise ValueError(f"unknown variant: {post_only_cross!r}")
        self.post_only_cross = post_only_cross
        self.cancel_pending = cancel_pending
        self.closed_cl_ord_id_filter = closed_cl_ord_id_filter
        self._trades: dict[str, dict[str, Any]] = {}  # TradesHistory, oldest first
        self._ws_tokens: dict[str, float] = {}  # GetWebSocketsToken → issued at (server clock)
        self._ws_outboxes: dict[web.WebSocketResponse, asyncio.Queue[str]] = {}  # subscribed
        self._ws_transports: set[asyncio.BaseTransport] = set()  # every open WebSocket
        self._ws_paused = False  # pause_executions
        self.ws_heartbeat: float | None = 1.0  # seconds between heartbeats; None: none
        self._ws_sequence = 0  # executions messages pushed
        self._dead_man_at: float | None = None  # CancelAllOrdersAfter's trigger (server clock)
        self.rest_tier = rest_tier
        self.rest_counter = KRAKEN_TIERS[rest_tier].rest if rest_tier else None
        self.max_concurrent = max_concurrent
        self.monotonic = monotonic
        self._rest_counters: dict[str, CounterState] = {}  # per API key
        self._in_flight = 0  # private requests being served
        self._rewards: dict[str, Decimal] = {}  # Kraken asset code → its .F balance
        self._credit: dict[str, tuple[Decimal, Decimal]] = {}  # code → (credit, credit_used)
        self.counter = counter or TradingCounter()
        self.client_ids = client_ids
        self.deadline_errors = deadline_errors
        self.clock_offset = 0.0  # seconds added to the host's clock (see advance)
        self.latency = 0.0  # seconds added to every call
        self.unknown_txid_fails = False  # QueryOrders: an unknown txid fails the whole call
        self.stats = Stats()
        self.api_key = api_key or "test-key-" + secrets.token_hex(8)
        self.api_secret = api_secret or base64.b64encode(secrets.token_bytes(64)).decode()
        self._lock = threading.RLock()
        self._keys: dict[str, str] = {self.api_key: self.api_secret}
        self._nonces: dict[str, int] = {}
        self._pairs: dict[str, Pair] = {}
        self._assets: dict[str, str] = {}  # Kraken asset code → unified code
        for listing in listings:
            self._add_pair(listing)
        self._totals: dict[str, Decimal] = {}
        self._orders: dict[str, ServerOrder] = {}
        self._counters: dict[str, CounterState] = {}
        self._fail_calls: dict[int, str] = {}
        self._reject_orders: dict[int, str] = {}
        self._timeouts: dict[int, float] = {}
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._port = 0

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("the Kraken test server is not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> KrakenServer:
        """Serve from a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            return self
        loop = asyncio.new_event_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                runner = loop.run_until_complete(self._serve())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(runner.cleanup())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="kraken-test-server", daemon=True)
        self._thread.start()
        started.wait(10)
        if failure:
            self._thread = None
            raise RuntimeError("the Kraken test server did not start") from failure[0]
        return self

    def stop(self) -> None:
        """Stop serving; answers still being held back (timeouts) are cut off."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._thread = None
        self._port = 0

    @property
    def ws_url(self) -> str:
        """The private WebSocket v2 endpoint (Kraken's ``wss://ws-auth.kraken.com/v2``)."""
        return self.url.replace("http://", "ws://") + "/v2"

    def __enter__(self) -> KrakenServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    async def _serve(self) -> web.AppRunner:
        app = web.Application()
        app.router.add_get("/0/public/{method}", self._public)
        app.router.add_post("/0/private/{method}", self._private)
        app.router.add_get("/v2", self._websocket)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(runner.addresses[0][1])
        return runner

    # -- test controls --------------------------------------------------------------------

    def new_key(self) -> tuple[str, str]:
        """A further API key pair on the same account, with its own nonce sequence."""
        key = "test-key-" + secrets.token_hex(8)
        secret = base64.b64encode(secrets.token_bytes(64)).decode()
        with self._lock:
            self._keys[key] = secret
        return key, secret

    def advance(self, seconds: float) -> None:
        """Move the server's clock ``seconds`` ahead of the host's (deadlines, order times)."""
        if seconds < 0:
            raise ValueError("time does not run backwards")
        with self._lock:
            self.clock_offset += seconds
            self._fire_dead_man()

    def now(self) -> float:
        """The server's clock, in epoch seconds."""
        return time.time() + self.clock_offset

    def fund(self, asset: str, amount: Decimal | str) -> None:
        """Add ``amount`` (negative: remove) to an asset, by unified or Kraken code; a
        ``.F`` suffix (``BTC.F``, ``XBT.F``) funds the asset's Kraken Rewards balance."""
        rewards = asset.endswith(REWARDS)
        code = self._asset_code(asset[: -len(REWARDS)] if rewards else asset)
        book = self._rewards if rewards else self._totals
        with self._lock:
            book[code] = book.get(code, Decimal(0)) + Decimal(amount)

    def set_credit(self, asset: str, credit: Decimal | str, used: Decimal | str = "0") -> None:
        """Set an asset's BalanceEx ``credit`` and ``credit_used``."""
        code = self._asset_code(asset)
        with self._lock:
            self._credit[code] = (Decimal(credit), Decimal(used))

    def set_pair(
        self, symbol: str, status: str | None = None, tick_size: Decimal | str | None = None
    ) -> None:
        """Put a pair in another mode (``online``, ``post_only``, ``limit_only``,
        ``cancel_only``, ``reduce_only``) and/or give it a ``tick_size`` coarser than its
        ``pair_decimals``."""
        if status is not None and status not in PAIR_STATUSES:
            raise ValueError(f"unknown pair status {status!r}")
        with self._lock:
            pair = self._pair_by_symbol(symbol)
            if status is not None:
                pair.status = status
            if tick_size is not None:
                pair.tick_size = Decimal(tick_size)

    def set_quote(self, symbol: str, bid: Decimal | str, ask: Decimal | str) -> None:
        """Set a pair's best bid and ask (post-only checks and Ticker read them)."""
        bid, ask = Decimal(bid), Decimal(ask)
        if not 0 < bid < ask:
            raise ValueError(f"need 0 < bid < ask, got {bid} / {ask}")
        with self._lock:
            pair = self._pair_by_symbol(symbol)
            pair.bid, pair.ask = bid, ask

    def fill(self, order_id: str, amount: Decimal | str | None = None) -> dict[str, Any]:
        """Execute ``amount`` (default: all that remains) of an open order at its limit price.

        Balances move as on Kraken: the fee, at the maker rate, in the currency the order's
        ``oflags`` ask for (base for a sell, quote for a buy, when they ask for neither; module
        docstring); a sell spends the base balance first, then its ``.F`` balance. The order
        closes when nothing remains. Returns the order's Kraken description.
        """
        with self._lock:
            order = self._orders[order_id]
            qty = order.remaining if amount is None else Decimal(amount)
            if order.status != "open" or not 0 < qty <= order.remaining:
                raise ValueError(f"cannot fill {qty} of {order_id} ({order.status})")
            market = order.pair.listing
            value = order.spec.price * qty
            fee = value * market.market.maker_fee
            sign = 1 if order.spec.side == "buy" else -1
            in_base = _fee_in_base(order.spec)
            base_fee = qty * market.market.maker_fee if in_base else Decimal(0)
            self._add(market.kraken_base, sign * qty - base_fee)
            self._add(market.kraken_quote, -sign * value - (Decimal(0) if in_base else fee))
            order.vol_exec += qty
            order.cost += value
            order.fee += fee
            self._record_trade(order, qty, value, fee)
            if order.remaining == 0:
                order.status, order.closetm = "closed", self.now()
            return order.info()

    def fail_private_call(
        self, n: int, kind: Literal["5xx", "unavailable", "throttled"] = "5xx"
    ) -> None:
        """Make the ``n``-th private call fail before doing anything: HTTP 500,
        ``EService:Unavailable`` or ``EService:Throttled: <ts>``. ``stats.private_calls + 1``
        is the next one."""
        with self._lock:
            self._fail_calls[n] = kind

    def reject_order(self, n: int, error: str) -> None:
        """Refuse the ``n``-th order received with ``error`` (e.g. ``EOrder:Insufficient
        funds``); in a batch only that order is refused. ``stats.orders_received + 1`` is next."""
        with self._lock:
            self._reject_orders[n] = error

    def timeout_after_accept(self, n: int, delay: float = 3.0) -> None:
        """Process the ``n``-th placement call as usual, then hold its answer back ``delay``
        seconds (longer than the client waits). ``stats.placements + 1`` is the next one."""
        with self._lock:
            self._timeouts[n] = delay

    def settle_cancels(self) -> int:
        """The engine completes every pending cancel of an order still open; returns how many."""
        with self._lock:
            pending = [o for o in self._open() if o.cancel_pending]
            for o in pending:
                o.status, o.closetm, o.reason = "canceled", self.now(), "User requested"
            return len(pending)

    def order(self, order_id: str) -> dict[str, Any]:
        """An order's Kraken description (as QueryOrders gives it)."""
        with self._lock:
            self._fire_dead_man()
            return self._orders[order_id].info()

    def orders(self) -> list[dict[str, Any]]:
        with self._lock:
            self._fire_dead_man()
            return [{"txid": o.txid, **o.info()} for o in self._orders.values()]

    def balance(self, asset: str) -> tuple[Decimal, Decimal]:
        """(total, held by open orders) of an asset, by unified or Kraken code."""
        code = self._asset_code(asset)
        with self._lock:
            return self._totals.get(code, Decimal(0)), self._held(code)

    def drop_websockets(self) -> int:
        """Cut every open WebSocket at once, without a close frame (a network failure);
        returns how many. Call it from the test, not from the server's thread."""
        if self._loop is None:
            return 0
        return asyncio.run_coroutine_threadsafe(self._drop_websockets(), self._loop).result(5)

    def pause_executions(self, paused: bool = True) -> None:
        """Stop (``paused``) or resume pushing fills over the WebSocket; fills made meanwhile
        are never pushed, TradesHistory still has them (module docstring)."""
        with self._lock:
            self._ws_paused = paused

    def ws_subscribers(self) -> int:
        """How many connections are subscribed to ``executions`` now."""
        with self._lock:
            return len(self._ws_outboxes)

    # -- HTTP -----------------------------------------------------------------------------

    async def _public(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        handler = self._public_handlers().get(request.match_info["method"])
        try:
            if handler is None:
                raise KrakenError("EGeneral:Unknown method")
            with self._lock:
                self.stats.calls[request.match_info["method"]] += 1
                return _answer(handler(dict(request.query)))
        except KrakenError as e:
            return _answer(error=str(e))
        except Exception:
            return self._bug()

    async def _private(self, request: web.Request) -> web.Response:
        self._in_flight += 1  # requests being served, for EService:Throttled (max_concurrent)
        try:
            return await self._serve_private(request)
        finally:
            self._in_flight -= 1

    async def _serve_private(self, request: web.Request) -> web.Response:
        if self.latency:
            await asyncio.sleep(self.latency)
        method = request.match_info["method"]
        body = await request.text()
        try:
            params = _parse_body(body, request.content_type)
            with self._lock:
                self._authenticate(request, body, params)
                self.stats.private_calls += 1
                self.stats.calls[method] += 1
                fault = self._fail_calls.pop(self.stats.private_calls, None)
                if fault == "throttled" or (
                    self.max_concurrent is not None and self._in_flight > self.max_concurrent
                ):
                    self.stats.throttled += 1
                    raise KrakenError(f"EService:Throttled: {int(self.now()) + 1}")
                self._charge_rest(request.headers.get("API-Key", ""), method)
                self._fire_dead_man()
            if fault == "5xx":
                return web.Response(status=500, text="Internal Server Error")
            if fault == "unavailable":
                raise KrakenError("EService:Unavailable")
            handler = self._private_handlers().get(method)
            if handler is None:
                raise KrakenError("EGeneral:Unknown method")
            delay = 0.0
            with self._lock:
                if method in ("AddOrder", "AddOrderBatch"):
                    self.stats.placements += 1
                    delay = self._timeouts.pop(self.stats.placements, 0.0)
                result = handler(params)
            if delay:
                await asyncio.sleep(delay)
            return _answer(result)
        except KrakenError as e:
            return _answer(error=str(e))
        except Exception:
            return self._bug()

    def _charge_rest(self, key: str, method: str) -> None:
        """The key's REST call counter (``rest_tier``; module docstring): charge the call or
        refuse it with ``EAPI:Rate limit exceeded``."""
        cost = rest_cost(method)
        if self.rest_counter is None or cost == 0:
            return
        state = self._rest_counters.get(key, CounterState(0.0, self.monotonic()))
        admitted = self.rest_counter.admit(state, self.monotonic(), cost)
        if admitted is None:
            self.stats.rest_refusals += 1
            raise KrakenError("EAPI:Rate limit exceeded")
        self._rest_counters[key] = admitted
        self.stats.rest_peak = max(self.stats.rest_peak, admitted.value)

    def _bug(self) -> web.Response:
        self.stats.errors.append(traceback.format_exc())
        return web.Response(status=500, text="test server bug")

    def _authenticate(self, request: web.Request, body: str, params: Params) -> None:
        key = request.headers.get("API-Key", "")
        secret = self._keys.get(key)
        if secret is None:
            raise KrakenError("EAPI:Invalid key")
        nonce = str(params.get("nonce", ""))
        if not nonce.isdigit():
            raise KrakenError("EAPI:Invalid nonce")
        expected = kraken_signature(request.path, nonce, body, secret)
        if not hmac.compare_digest(expected, request.headers.get("API-Sign", "")):
            raise KrakenError("EAPI:Invalid signature")
        if int(nonce) <= self._nonces.get(key, 0):
            raise KrakenError("EAPI:Invalid nonce")
        self._nonces[key] = int(nonce)

    def _public_handlers(self) -> Mapping[str, Callable[[Params], Any]]:
        return {
            "Time": lambda _: {
                "unixtime": int(self.now()),
                "rfc1123": formatdate(self.now(), usegmt=True),
            },
            "SystemStatus": lambda _: {
                "status": "online",
                "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
            "Assets": self._assets_info,
            "AssetPairs": self._asset_pairs,
            "Ticker": self._ticker,
        }

    def _private_handlers(self) -> Mapping[str, Callable[[Params], Any]]:
        return {
            "Balance": lambda _: {c: _fmt(t, 10) for c, t in self._totals.items()},
            "BalanceEx": self._balance_ex,
            "AddOrder": self._add_order,
            "AddOrderBatch": self._add_order_batch,
            "CancelOrder": self._cancel_order,
            "AmendOrder": self._amend_order,
            "CancelOrderBatch": self._cancel_order_batch,
            "OpenOrders": lambda p: {"open": self._select(p, open_=True)},
            "ClosedOrders": self._closed_orders,
            "QueryOrders": self._query_orders,
            "QueryTrades": self._query_trades,
            "TradesHistory": self._trades_history,
            "CancelAllOrdersAfter": self._cancel_all_orders_after,
            "GetWebSocketsToken": self._ws_token,
        }

    # -- public endpoints -----------------------------------------------------------------

    def _assets_info(self, _: Params) -> dict[str, Any]:
        return {
            code: {
                "aclass": "currency",
                "altname": _ALTNAMES.get(unified, unified),
                "decimals": 4 if unified in FIAT else 10,
                "display_decimals": 2 if unified in FIAT else 5,
                "status": "enabled",
            }
            for code, unified in self._assets.items()
        }

    def _asset_pairs(self, query: Params) -> dict[str, Any]:
        pairs = self._pairs_named(query.get("pair"))
        return {p.id: _pair_info(p) for p in pairs}

    def _ticker(self, query: Params) -> dict[str, Any]:
        result = {}
        for p in self._pairs_named(query.get("pair")):
            mid = round_price_up((p.bid + p.ask) / 2, p.listing.market.tick)
            result[p.id] = {
                "a": [p.price(p.ask), "1", "1.000"],
                "b": [p.price(p.bid), "1", "1.000"],
                "c": [p.price(mid), "0.10000000"],
                "v": ["100.00000000", "1000.00000000"],
                "p": [p.price(mid), p.price(mid)],
                "t": [10, 100],
                "l": [p.price(p.bid), p.price(p.bid)],
                "h": [p.price(p.ask), p.price(p.ask)],
                "o": p.price(mid),
            }
        return result

    # -- private endpoints ----------------------------------------------------------------

    def _balance_ex(self, _: Params) -> dict[str, Any]:
        """Every asset with its credit fields, and each ``.F`` balance under its own code
        (module docstring)."""
        codes = set(self._totals) | set(self._credit) | {self._held_asset(o) for o in self._open()}
        result: dict[str, Any] = {}
        for c in sorted(codes):
            credit, used = self._credit.get(c, (Decimal(0), Decimal(0)))
            result[c] = {
                "balance": _fmt(self._totals.get(c, Decimal(0)), 10),
                "credit": _fmt(credit, 4),
                "credit_used": _fmt(used, 4),
                "hold_trade": _fmt(self._held(c), 10),
            }
        for c, amount in sorted(self._rewards.items()):
            unified = self._assets[c]
            result[_ALTNAMES.get(unified, unified) + REWARDS] = {
                "balance": _fmt(amount, 10),
                "credit": "0.0000",
                "credit_used": "0.0000",
                "hold_trade": "0.0000000000",
            }
        return result

    def _available(self, asset: str) -> Decimal:
        """BalanceEx's "balance + credit - credit_used - hold_trade", with the ``.F``
        balance spent through its base asset (module docstring)."""
        credit, used = self._credit.get(asset, (Decimal(0), Decimal(0)))
        total = self._totals.get(asset, Decimal(0)) + self._rewards.get(asset, Decimal(0))
        return total + credit - used - self._held(asset)

    def _add_order(self, params: Params) -> dict[str, Any]:
        self.stats.placement_params.append(params)
        pair = self._pair(params.get("pair"))
        number = self._receive(1)
        spec = _spec(params)
        elapsed = self._check_deadline(params)
        self._validate(pair, spec)
        if _truthy(params.get("validate")):
            return {"descr": {"order": _describe(pair, spec)}}
        self._admit(pair, 1)
        self._engine_deadline(elapsed)
        error = self._refusal(pair, spec, number)
        if error:
            raise KrakenError(error)
        order = self._accept(pair, spec)
        self._engine_post_only(order)
        return {"descr": {"order": order.description}, "txid": [order.txid]}

    def _add_order_batch(self, params: Params) -> dict[str, Any]:
        self.stats.placement_params.append(params)
        raw = params.get("orders")
        if not isinstance(raw, list) or not 2 <= len(raw) <= MAX_BATCH:
            raise KrakenError("EGeneral:Invalid arguments:orders")
        pair = self._pair(params.get("pair"))
        first = self._receive(len(raw))
        specs = [_spec(o) for o in raw]
        elapsed = self._check_deadline(params)  # top-level: one deadline for the whole batch
        for spec in specs:
            self._validate(pair, spec)
        if _truthy(params.get("validate")):
            return {"orders": [{"descr": {"order": _describe(pair, s)}} for s in specs]}
        self._admit(pair, len(specs))
        self._engine_deadline(elapsed)
        answers: list[dict[str, Any]] = []
        for i, spec in enumerate(specs):
            error = self._refusal(pair, spec, first + i)
            if error:
                answers.append({"error": error})
            else:
                order = self._accept(pair, spec)
                self._engine_post_only(order)
                answers.append({"txid": order.txid, "descr": {"order": order.description}})
        return {"orders": answers}

    def _cancel_order(self, params: Params) -> dict[str, Any]:
        ref = params.get("cl_ord_id") or params.get("txid")
        order = self._find_open(str(ref) if ref is not None else "")
        if order is None:
            raise KrakenError("EOrder:Unknown order")
        if self.cancel_pending:  # see the module docstring: CancelOrder's ``pending``
            order.cancel_pending = True
            return {"count": 1, "pending": True}
        self._cancel(order)
        return {"count": 1}

    def _amend_order(self, params: Params) -> dict[str, Any]:
        """AmendOrder in place (module docstring): same txid and cl_ord_id."""
        ref = params.get("txid") or params.get("cl_ord_id")
        order = self._find_open(str(ref) if ref is not None else "")
        if order is None or order.cancel_pending:
            raise KrakenError("EOrder:Unknown order")
        try:
            price = Decimal(str(params.get("limit_price") or order.spec.price))
            volume = Decimal(str(params.get("order_qty") or order.spec.volume))
        except InvalidOperation as e:
            raise KrakenError("EGeneral:Invalid arguments:limit_price") from e
        amended = replace(order.spec, price=price, volume=volume)
        self._validate(order.pair, amended)
        if _truthy(params.get("post_only")) and self._crosses(order.pair, amended):
            raise KrakenError("EOrder:Post only order")
        order.spec = amended
        return {"amend_id": "TA" + secrets.token_hex(6).upper()}

    def _cancel_order_batch(self, params: Params) -> dict[str, Any]:
        refs = params.get("orders") or []
        if not isinstance(refs, list) or not refs:
            raise KrakenError("EGeneral:Invalid arguments:orders")
        count = 0
        for ref in refs:
            key = ref.get("txid") or ref.get("cl_ord_id") if isinstance(ref, dict) else ref
            order = self._find_open(str(key))
            if order is not None:
                self._cancel(order)
                count += 1
        return {"count": count}

    def _closed_orders(self, params: Params) -> dict[str, Any]:
        """Closed orders, 50 from ``ofs``, the most recent first, within ``start`` / ``end``,
        as Kraken documents (module docstring)."""
        wanted = params if self.closed_cl_ord_id_filter else {**params, "cl_ord_id": None}
        start, end = self._bound(params, "start"), self._bound(params, "end")
        which = str(params.get("closetime") or "both")
        if which not in ("open", "close", "both"):
            raise KrakenError("EGeneral:Invalid arguments:closetime")
        closed = []
        for seq, o in enumerate(self._orders.values()):
            times = [t for t in (o.opentm, o.closetm) if t is not None]
            times = times[:1] if which == "open" else times[1:] if which == "close" else times
            in_window = any(_within(t, start, end) for t in times)
            if o.status != "open" and _matches(o, wanted) and in_window:
                closed.append((o.closetm or o.opentm, seq, o))
        closed.sort(key=lambda c: c[:2], reverse=True)
        page = _page(closed, params)
        return {"closed": {o.txid: o.info() for *_, o in page}, "count": len(closed)}

    def _query_orders(self, params: Params) -> dict[str, Any]:
        """Orders by txid; ``userref`` filters, ``cl_ord_id`` is no parameter of QueryOrders
        (module docstring)."""
        ids = [t.strip() for t in str(params.get("txid", "")).split(",") if t.strip()]
        if not ids:
            raise KrakenError("EGeneral:Invalid arguments:txid")
        if len(ids) > QUERY_ORDERS_MAX:
            raise KrakenError("EGeneral:Invalid arguments:txid")
        if self.unknown_txid_fails and any(t not in self._orders for t in ids):
            # Whether Kraken answers an unknown txid with an error for the whole call or
            # leaves it out is not documented; both are modelled (``unknown_txid_fails``).
            raise KrakenError("EOrder:Invalid order")
        result = {}
        for txid in ids:
            order = self._orders.get(txid)
            if order is not None and _matches(order, {"userref": params.get("userref")}):
                result[txid] = order.info()
                if _truthy(params.get("trades")):
                    trades = [t for t, v in self._trades.items() if v["ordertxid"] == txid]
                    if trades:  # Kraken leaves the field out of an order without trades
                        result[txid]["trades"] = trades
        return result

    def _query_trades(self, params: Params) -> dict[str, Any]:
        """Trades by txid, up to 20 ("Comma delimited list of transaction IDs to query info
        about (20 maximum)", https://docs.kraken.com/api-reference/account-data/
        get-trades-info), each as TradesHistory gives it; unknown txids are left out."""
        ids = [t.strip() for t in str(params.get("txid", "")).split(",") if t.strip()]
        if not ids or len(ids) > QUERY_TRADES_MAX:
            raise KrakenError("EGeneral:Invalid arguments:txid")
        return {txid: self._trades[txid] for txid in ids if txid in self._trades}

    def _trades_history(self, params: Params) -> dict[str, Any]:
        """Trades, 50 from ``ofs``, the most recent first, within ``start`` / ``end`` (module
        docstring)."""
        start, end = self._bound(params, "start"), self._bound(params, "end")
        trades = [
            (t["time"], seq, txid, t)
            for seq, (txid, t) in enumerate(self._trades.items())
            if _within(t["time"], start, end)
        ]
        trades.sort(key=lambda t: t[:2], reverse=True)
        page = _page(trades, params)
        return {"trades": {txid: t for *_, txid, t in page}, "count": len(trades)}

    def _cancel_all_orders_after(self, params: Params) -> dict[str, Any]:
        """Set (``timeout`` > 0) or disable (0) the dead man's switch (module docstring)."""
        try:
            timeout = int(str(params.get("timeout", "")))
        except ValueError as e:
            raise KrakenError("EGeneral:Invalid arguments:timeout") from e
        if not 0 <= timeout < DEAD_MAN_MAX:
            raise KrakenError("EGeneral:Invalid arguments:timeout")
        now = self.now()
        self._dead_man_at = now + timeout if timeout else None
        trigger = _rfc3339(self._dead_man_at) if self._dead_man_at is not None else "0"
        return {"currentTime": _rfc3339(now), "triggerTime": trigger}

    # -- WebSocket v2 (module docstring) --------------------------------------------------

    def _ws_token(self, _: Params) -> dict[str, Any]:
        token = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
        self._ws_tokens[token] = self.now()
        return {"token": token, "expires": WS_TOKEN_EXPIRES}

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        transport = request.transport
        outbox: asyncio.Queue[str] = asyncio.Queue()
        outbox.put_nowait(json.dumps(_ws_status()))
        with self._lock:
            if transport is not None:
                self._ws_transports.add(transport)
        sender = asyncio.create_task(self._ws_send(ws, outbox))
        try:
            async for message in ws:
                if message.type is WSMsgType.TEXT:
                    outbox.put_nowait(json.dumps(self._ws_answer(message.data, ws, outbox)))
        except Exception:
            self.stats.errors.append(traceback.format_exc())
        finally:
            with self._lock:
                self._ws_outboxes.pop(ws, None)
                if transport is not None:
                    self._ws_transports.discard(transport)
            sender.cancel()
        return ws

    async def _ws_send(self, ws: web.WebSocketResponse, outbox: asyncio.Queue[str]) -> None:
        """Send what is queued, in order; a heartbeat after ``ws_heartbeat`` seconds without
        any other message, once subscribed."""
        while not ws.closed:
            interval = self.ws_heartbeat
            try:
                text = await asyncio.wait_for(outbox.get(), interval or 0.2)
            except TimeoutError:
                if interval is None or ws not in self._ws_outboxes:
                    continue
                text = json.dumps({"channel": "heartbeat"})
            try:
                await ws.send_str(text)
            except (ConnectionError, RuntimeError):
                return

    def _ws_answer(
        self, text: str, ws: web.WebSocketResponse, outbox: asyncio.Queue[str]
    ) -> dict[str, Any]:
        """The answer to one request: ``subscribe`` (``executions``) or ``ping``. Anything
        else is refused with ``EGeneral:Invalid arguments`` (this server's choice)."""
        time_in = _rfc3339_micro(self.now())
        try:
            request = json.loads(text)
        except ValueError:
            request = None
        if not isinstance(request, dict):
            request = {}
        method = request.get("method")
        answer: dict[str, Any] = {"method": "pong" if method == "ping" else method}
        raw_params = request.get("params")
        params: dict[str, Any] = raw_params if isinstance(raw_params, dict) else {}
        error = None
        if method == "subscribe" and params.get("channel") == "executions":
            with self._lock:
                issued = self._ws_tokens.get(str(params.get("token")))
                if issued is None or self.now() - issued > WS_TOKEN_EXPIRES:
                    error = WS_INVALID_SESSION
                else:
                    self._ws_outboxes[ws] = outbox
            answer["result"] = {
                "channel": "executions",
                "maxratecount": 125,
                "snap_orders": bool(params.get("snap_orders", True)),
                "snap_trades": bool(params.get("snap_trades", False)),
            }
        elif method != "ping":
            error = "EGeneral:Invalid arguments"
        if error is not None:
            answer.pop("result", None)
            answer["error"] = error
        answer["success"] = error is None
        answer["time_in"], answer["time_out"] = time_in, _rfc3339_micro(self.now())
        if "req_id" in request:
            answer["req_id"] = request["req_id"]
        return answer

    def _publish_execution(self, txid: str, order: ServerOrder, qty: Decimal, fee: Decimal) -> None:
        """Push a fill to every subscriber (called under the lock, from any thread): the
        documented ``executions`` update, the fee in the asset it was taken in."""
        if self._ws_paused or not self._ws_outboxes or self._loop is None:
            return
        market = order.pair.listing.market
        if _fee_in_base(order.spec):
            fee_asset, fee_qty = market.base, qty * market.maker_fee
        else:
            fee_asset, fee_qty = market.quote, fee
        execution: dict[str, Any] = {
            "order_id": order.txid,
            "exec_id": txid,
            "exec_type": "trade",
            "trade_id": self._trades[txid]["trade_id"],
            "symbol": market.symbol,
            "side": order.spec.side,
            "last_qty": float(qty),
            "last_price": float(order.spec.price),
            "liquidity_ind": "m",
            "cost": float(qty * order.spec.price),
            "order_userref": order.spec.userref or 0,
            "order_status": "filled" if order.remaining == 0 else "partially_filled",
            "order_type": "limit",
            "fees": [{"asset": fee_asset, "qty": float(fee_qty)}],
            "timestamp": _rfc3339_micro(float(self._trades[txid]["time"])),
        }
        if order.spec.cl_ord_id:
            execution["cl_ord_id"] = order.spec.cl_ord_id
        self._ws_sequence += 1
        text = json.dumps(
            {
                "channel": "executions",
                "type": "update",
                "data": [execution],
                "sequence": self._ws_sequence,
            }
        )
        for outbox in self._ws_outboxes.values():
            self._loop.call_soon_threadsafe(outbox.put_nowait, text)

    async def _drop_websockets(self) -> int:
        with self._lock:
            transports = list(self._ws_transports)
            self._ws_transports.clear()
            self._ws_outboxes.clear()
        for transport in transports:
            transport.abort()  # type: ignore[attr-defined]
        return len(transports)

    # -- order book-keeping ---------------------------------------------------------------

    def _fire_dead_man(self) -> None:
        """CancelAllOrdersAfter's timer, if it has expired: every open order closes at the
        trigger time, then the timer is off (module docstring)."""
        at = self._dead_man_at
        if at is None or self.now() < at:
            return
        self._dead_man_at = None
        for o in self._open():
            o.status, o.closetm, o.reason = "canceled", at, DEAD_MAN_REASON

    def _record_trade(self, order: ServerOrder, qty: Decimal, value: Decimal, fee: Decimal) -> None:
        """One TradesHistory entry for a fill (fields of Kraken's example answer)."""
        txid = "T{}-{}-{}".format(*(secrets.token_hex(4).upper()[:n] for n in (5, 5, 6)))
        self._trades[txid] = {
            "ordertxid": order.txid,
            "pair": order.pair.id,
            "time": self.now(),
            "type": order.spec.side,
            "ordertype": "limit",
            "price": order.pair.price(order.spec.price),
            "cost": _fmt(value, 5),
            "fee": _fmt(fee, 5),
            "vol": _fmt(qty, LOT_DECIMALS),
            "margin": "0.00000",
            "misc": "",
            "trade_id": len(self._trades) + 1,
            "maker": True,
        }
        self._publish_execution(txid, order, qty, fee)

    def _bound(self, params: Params, name: str) -> float | None:
        """``start`` or ``end``: a Unix time, or an order's txid standing for its ``opentm``
        (a trade's txid for its ``time``)."""
        raw = params.get(name)
        if raw in (None, ""):
            return None
        ref = str(raw)
        if ref in self._orders:
            return self._orders[ref].opentm
        if ref in self._trades:
            return float(self._trades[ref]["time"])
        try:
            return float(ref)
        except ValueError as e:
            raise KrakenError(f"EGeneral:Invalid arguments:{name}") from e

    def _receive(self, count: int) -> int:
        first = self.stats.orders_received + 1
        self.stats.orders_received += count
        return first

    def _check_deadline(self, params: Params) -> bool:
        """Check a request's ``deadline`` on receipt: raises for one outside Kraken's window
        (whole request, before the engine); True if it has elapsed and the engine is to
        reject it (``deadline_errors="engine"``), else False."""
        raw = params.get("deadline")
        if raw in (None, ""):
            return False
        try:
            deadline = datetime.fromisoformat(str(raw))
        except ValueError as e:
            raise KrakenError(DEADLINE_INVALID) from e
        if deadline.tzinfo is None:
            raise KrakenError(DEADLINE_INVALID)
        ahead = deadline - datetime.fromtimestamp(self.now(), UTC)
        if ahead.total_seconds() <= 0 and self.deadline_errors == "engine":
            return True
        if not DEADLINE_MIN_AHEAD <= ahead <= DEADLINE_MAX_AHEAD:
            self.stats.deadline_refusals += 1
            raise KrakenError(DEADLINE_INVALID)
        return False

    def _engine_deadline(self, elapsed: bool) -> None:
        """The matching engine rejects a request that reached it after its deadline."""
        if elapsed:
            self.stats.deadline_refusals += 1
            raise KrakenError(DEADLINE_ELAPSED)

    def _validate(self, pair: Pair, spec: Spec) -> None:
        """Whole-request checks: a failure refuses every order of a batch."""
        market = pair.listing.market
        if _places(spec.price) > pair.decimals:
            raise KrakenError(
                f"EOrder:Invalid price:{pair.altname} price can only be specified up to "
                f"{pair.decimals} decimals."
            )
        if spec.price % pair.tick:  # off the tick_size grid (module docstring)
            raise KrakenError("EGeneral:Invalid arguments:price")
        if _places(spec.volume) > LOT_DECIMALS:
            raise KrakenError("EGeneral:Invalid arguments:volume")
        if pair.status in ("cancel_only", "reduce_only") or (
            pair.status == "post_only" and not spec.post_only
        ):
            raise KrakenError(f"EService:Market in {pair.status} mode")
        if spec.volume < market.min_amount:
            raise KrakenError("EOrder:Order minimum not met")
        if spec.volume * spec.price < market.min_cost:
            raise KrakenError("EOrder:Cost minimum not met")

    def _admit(self, pair: Pair, cost: float) -> None:
        state = self._counters.get(pair.id, CounterState())
        admitted = self.counter.admit(state, self.monotonic(), cost)
        if admitted is None:
            self.stats.rate_limit_refusals += 1
            raise KrakenError("EOrder:Rate limit exceeded")
        self._counters[pair.id] = admitted

    def _refusal(self, pair: Pair, spec: Spec, number: int) -> str | None:
        """Why the engine refuses this one order (funds, post-only, injected), or None."""
        injected = self._reject_orders.pop(number, None)
        if injected:
            return injected
        holders = self._open() if self.client_ids == "open" else self._orders.values()
        if spec.cl_ord_id and any(o.spec.cl_ord_id == spec.cl_ord_id for o in holders):
            return "EOrder:Duplicate order"
        if self.post_only_cross == "reject" and spec.post_only and self._crosses(pair, spec):
            return "EOrder:Post only order"
        listing = pair.listing
        asset = listing.kraken_base if spec.side == "sell" else listing.kraken_quote
        need = spec.volume if spec.side == "sell" else spec.volume * spec.price
        if self._available(asset) < need:
            return "EOrder:Insufficient funds"
        return None

    def _accept(self, pair: Pair, spec: Spec) -> ServerOrder:
        txid = "O{}-{}-{}".format(*(secrets.token_hex(4).upper()[:n] for n in (5, 5, 6)))
        order = ServerOrder(txid, pair, spec, opentm=self.now())
        self._orders[txid] = order
        self.stats.orders_accepted += 1
        return order

    @staticmethod
    def _crosses(pair: Pair, spec: Spec) -> bool:
        return (spec.side == "sell" and spec.price <= pair.bid) or (
            spec.side == "buy" and spec.price >= pair.ask
        )

    def _engine_post_only(self, order: ServerOrder) -> None:
        """``post_only_cross="cancel"``: the engine cancels an accepted post-only order that
        would cross (module docstring)."""
        if order.spec.post_only and self._crosses(order.pair, order.spec):
            order.status, order.closetm, order.reason = "canceled", self.now(), "Post only order"

    def _cancel(self, order: ServerOrder) -> None:
        self._admit(order.pair, cancel_penalty(self.now() - order.opentm))
        order.status, order.closetm, order.reason = "canceled", self.now(), "User requested"

    def _find_open(self, ref: str) -> ServerOrder | None:
        """The open order with this txid or cl_ord_id (closed ones may share the cl_ord_id)."""
        order = self._orders.get(ref)
        if order is None:
            order = next((o for o in self._open() if o.spec.cl_ord_id == ref), None)
        return order if order is not None and order.status == "open" else None

    def _select(self, params: Params, open_: bool) -> dict[str, Any]:
        return {
            o.txid: o.info()
            for o in self._orders.values()
            if (o.status == "open") == open_ and _matches(o, params)
        }

    def _open(self) -> list[ServerOrder]:
        return [o for o in self._orders.values() if o.status == "open"]

    def _held_asset(self, order: ServerOrder) -> str:
        listing = order.pair.listing
        return listing.kraken_base if order.spec.side == "sell" else listing.kraken_quote

    def _held(self, asset: str) -> Decimal:
        held = Decimal(0)
        for o in self._open():
            if self._held_asset(o) == asset:
                held += o.remaining if o.spec.side == "sell" else o.remaining * o.spec.price
        return held

    def _add(self, asset: str, amount: Decimal) -> None:
        """Move ``asset``'s balance; a debit past it is taken from its ``.F`` balance."""
        total = self._totals.get(asset, Decimal(0)) + amount
        rewards = self._rewards.get(asset, Decimal(0))
        if total < 0 < rewards:
            taken = min(-total, rewards)
            self._rewards[asset] = rewards - taken
            total += taken
        self._totals[asset] = total

    # -- markets and assets ---------------------------------------------------------------

    def _add_pair(self, listing: Listing) -> None:
        m = listing.market
        altname = _ALTNAMES.get(m.base, m.base) + _ALTNAMES.get(m.quote, m.quote)
        bid = round_price_down(listing.start * (1 - _HALF_SPREAD), m.tick)
        ask = round_price_up(listing.start * (1 + _HALF_SPREAD), m.tick)
        self._pairs[listing.kraken_pair] = Pair(listing, altname, bid, ask)
        self._assets[listing.kraken_base] = m.base
        self._assets[listing.kraken_quote] = m.quote

    def _pair(self, name: Any) -> Pair:
        for p in self._pairs.values():
            if name in (p.id, p.altname):
                return p
        raise KrakenError("EQuery:Unknown asset pair")

    def _pairs_named(self, names: Any) -> list[Pair]:
        if not names:
            return list(self._pairs.values())
        return [self._pair(n) for n in str(names).split(",")]

    def _pair_by_symbol(self, symbol: str) -> Pair:
        for p in self._pairs.values():
            if p.listing.market.symbol == symbol:
                return p
        raise KeyError(f"no pair {symbol} on the test server")

    def _asset_code(self, asset: str) -> str:
        if asset in self._assets:
            return asset
        for code, unified in self._assets.items():
            if unified == asset:
                return code
        raise KeyError(f"no asset {asset} on the test server")


# -- request parsing and answers ----------------------------------------------------------


def _answer(result: Any = None, error: str | None = None) -> web.Response:
    body: dict[str, Any] = {"error": [error] if error else []}
    if error is None:
        body["result"] = result
    return web.json_response(body)


def _parse_body(body: str, content_type: str) -> Params:
    """A private call's parameters: JSON (AddOrderBatch, CancelOrderBatch) or form-encoded."""
    if content_type == "application/json":
        try:
            parsed = json.loads(body or "{}")
        except json.JSONDecodeError as e:
            raise KrakenError("EGeneral:Invalid arguments") from e
        if not isinstance(parsed, dict):
            raise KrakenError("EGeneral:Invalid arguments")
        return parsed
    return dict(parse_qsl(body, keep_blank_values=True))


def _spec(params: Mapping[str, Any]) -> Spec:
    side = params.get("type")
    if side not in ("buy", "sell"):
        raise KrakenError("EGeneral:Invalid arguments:type")
    if params.get("ordertype") != "limit":
        raise KrakenError("EGeneral:Invalid arguments:ordertype")
    try:
        price, volume = Decimal(str(params["price"])), Decimal(str(params["volume"]))
    except (KeyError, InvalidOperation) as e:
        raise KrakenError("EGeneral:Invalid arguments:price") from e
    if not (price.is_finite() and volume.is_finite() and price > 0 and volume > 0):
        raise KrakenError("EGeneral:Invalid arguments:volume")
    userref = params.get("userref")
    return Spec(
        side=str(side),
        price=price,
        volume=volume,
        oflags=str(params.get("oflags") or ""),
        cl_ord_id=str(params["cl_ord_id"]) if params.get("cl_ord_id") else None,
        userref=int(userref) if userref not in (None, "") else None,
    )


def _describe(pair: Pair, spec: Spec) -> str:
    """Kraken's one-line order description, e.g. ``sell 0.10000000 XBTUSD @ limit 60100.0``."""
    volume = _fmt(spec.volume, LOT_DECIMALS)
    return f"{spec.side} {volume} {pair.altname} @ limit {pair.price(spec.price)}"


def _matches(order: ServerOrder, params: Mapping[str, Any]) -> bool:
    cl_ord_id = params.get("cl_ord_id")
    if cl_ord_id and order.spec.cl_ord_id != str(cl_ord_id):
        return False
    userref = params.get("userref")
    return not (userref not in (None, "") and order.spec.userref != int(userref))


def _within(moment: float, start: float | None, end: float | None) -> bool:
    """``start`` exclusive, ``end`` inclusive, as Kraken's history calls take them."""
    return (start is None or moment > start) and (end is None or moment <= end)


def _page(items: list[Any], params: Params) -> list[Any]:
    """The 50 of ``items`` (newest first) from offset ``ofs``."""
    try:
        ofs = int(str(params.get("ofs") or 0))
    except ValueError as e:
        raise KrakenError("EGeneral:Invalid arguments:ofs") from e
    if ofs < 0:
        raise KrakenError("EGeneral:Invalid arguments:ofs")
    return items[ofs : ofs + PAGE]


def _rfc3339(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _rfc3339_micro(moment: float) -> str:
    """WebSocket v2's timestamps, e.g. ``2023-09-22T10:33:05.709950Z``."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="microseconds")[:-6] + "Z"


def _ws_status() -> dict[str, Any]:
    """The ``status`` update a v2 connection opens with (system ``online``; module docstring)."""
    return {
        "channel": "status",
        "type": "update",
        "data": [
            {
                "api_version": "v2",
                "connection_id": secrets.randbits(63),
                "system": "online",
                "version": "2.0.0",
            }
        ],
    }


def _fee_in_base(spec: Spec) -> bool:
    """Whether a fill of this order pays its fee in base: ``fcib``, or a sell without
    ``fciq`` (module docstring)."""
    flags = spec.oflags.split(",")
    return "fcib" in flags or (spec.side == "sell" and "fciq" not in flags)


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _pair_info(p: Pair) -> dict[str, Any]:
    m, listing = p.listing.market, p.listing
    return {
        "altname": p.altname,
        "wsname": f"{_ALTNAMES.get(m.base, m.base)}/{_ALTNAMES.get(m.quote, m.quote)}",
        "aclass_base": "currency",
        "base": listing.kraken_base,
        "aclass_quote": "currency",
        "quote": listing.kraken_quote,
        "lot": "unit",
        "cost_decimals": 5,
        "pair_decimals": p.decimals,
        "lot_decimals": LOT_DECIMALS,
        "lot_multiplier": 1,
        "leverage_buy": [],
        "leverage_sell": [],
        "fees": [[0, float(m.taker_fee * 100)]],
        "fees_maker": [[0, float(m.maker_fee * 100)]],
        "fee_volume_currency": "ZUSD",
        "margin_call": 80,
        "margin_stop": 40,
        "ordermin": str(m.min_amount),
        "costmin": str(m.min_cost),
        "tick_size": str(p.tick),
        "status": p.status,
    }


def make_ccxt_exchange(server: KrakenServer, **kw: Any) -> CcxtExchange:
    """A CcxtExchange on ``server`` with a key of its own (so instances never share nonces),
    the server's counter rules, a 2 s timeout and ccxt's REST limiter at 1 ms — or, when the
    server counts REST calls (``rest_tier``), the adapter's model of that tier's counter on the
    server's clock; ``kw`` overrides any constructor argument."""
    key, secret = server.new_key()
    options: dict[str, Any] = {
        "api_key": key,
        "api_secret": secret,
        "base_url": server.url,
        "timeout": 2.0,
        "rate_limit_ms": 1,
        "counter": server.counter,
    }
    if server.rest_tier is not None:
        options.update(rate_limit_ms=None, tier=server.rest_tier, monotonic=server.monotonic)
    options.update(kw)
    return CcxtExchange("kraken", **options)
