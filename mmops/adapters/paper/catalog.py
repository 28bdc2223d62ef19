"""Kraken-like markets of the paper venue (and the local Kraken test server).

Ticks, lots and minimums follow Kraken's published AssetPairs (pair_decimals → tick,
lot_decimals → lot, ordermin, costmin) and its Starter fee tier (0.25% maker, 0.40% taker).
``start`` is where a seeded price path begins. BTC and ETH trade against USD and EUR, so two
pairs share a base asset.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from mmops.domain.models import Market

MAKER_FEE = Decimal("0.0025")
TAKER_FEE = Decimal("0.004")
LOT = Decimal("0.00000001")


@dataclass(frozen=True, slots=True)
class Listing:
    market: Market
    start: Decimal  # initial mid price of the paper price path
    kraken_pair: str  # Kraken's pair name, e.g. XXBTZUSD
    kraken_base: str  # Kraken's asset codes, e.g. XXBT / ZUSD
    kraken_quote: str


def _listing(
    symbol: str, tick: str, min_amount: str, start: str, pair: str, base: str, quote: str
) -> Listing:
    b, q = symbol.split("/")
    market = Market(
        symbol=symbol,
        base=b,
        quote=q,
        tick=Decimal(tick),
        lot=LOT,
        min_amount=Decimal(min_amount),
        min_cost=Decimal("0.5"),
        maker_fee=MAKER_FEE,
        taker_fee=TAKER_FEE,
    )
    return Listing(market, Decimal(start), pair, base, quote)


CATALOG: tuple[Listing, ...] = (
    _listing("BTC/USD", "0.1", "0.0001", "60000", "XXBTZUSD", "XXBT", "ZUSD"),
    _listing("ETH/USD", "0.01", "0.002", "3000", "XETHZUSD", "XETH", "ZUSD"),
    _listing("SOL/USD", "0.01", "0.02", "150", "SOLUSD", "SOL", "ZUSD"),
    _listing("XRP/USD", "0.00001", "2", "0.6", "XXRPZUSD", "XXRP", "ZUSD"),
    _listing("ADA/USD", "0.000001", "5", "0.45", "ADAUSD", "ADA", "ZUSD"),
    _listing("DOT/USD", "0.0001", "0.5", "7", "DOTUSD", "DOT", "ZUSD"),
    _listing("LINK/USD", "0.00001", "0.2", "15", "LINKUSD", "LINK", "ZUSD"),
    _listing("LTC/USD", "0.01", "0.05", "80", "XLTCZUSD", "XLTC", "ZUSD"),
    _listing("AVAX/USD", "0.01", "0.1", "30", "AVAXUSD", "AVAX", "ZUSD"),
    _listing("DOGE/USD", "0.0000001", "20", "0.15", "XDGUSD", "XXDG", "ZUSD"),
    _listing("BTC/EUR", "0.1", "0.0001", "55000", "XXBTZEUR", "XXBT", "ZEUR"),
    _listing("ETH/EUR", "0.01", "0.002", "2750", "XETHZEUR", "XETH", "ZEUR"),
)

BY_SYMBOL: dict[str, Listing] = {listing.market.symbol: listing for listing in CATALOG}
SYMBOLS: tuple[str, ...] = tuple(BY_SYMBOL)
