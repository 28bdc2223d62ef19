"""The checks of a session's first migration, done in Python before the rows reach PostgreSQL.

A session with no rows in the warehouse yet can be written with one COPY straight into
``orders`` and ``fills`` if nothing PostgreSQL's keys would refuse is sent: these classes pick,
from the migration lines (``records.ORDER_LINE_COLUMNS`` / ``FILL_LINE_COLUMNS``, TSV ending
with the Redis key), exactly the rows the conflict-safe SQL path would write, and the records
it would quarantine:

- orders: each Redis record once (HSCAN may return a field twice); an order id recorded under
  two pairs is kept once, under its first pair by name (then by key), the copies are strays;
- fills: a fill whose order id is not among the session's orders is an orphan (each record
  once); the others are de-duplicated per pair by the unique key's identity (order, time,
  price, quantity), keeping, of two records of one execution, the one with a trade id, then
  the smallest trade id, then the smallest key.

The identity is compared as text: a replay is the same text. Two spellings of one value
(``1.50`` and ``1.5``, which only a record in another layout can hold) are two identities
here and one to PostgreSQL's unique key, so the COPY meets a conflict and the warehouse redoes
that pair the conflict-safe way, which compares values: the rows written are the same either
way.

No I/O here; the warehouse sends what these return. Memory: one session's order lines, then
its order ids, and one pair's distinct fills at a time (the warehouse holds the pairs taken
until a batch is written).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

from mmops.domain.records import Stray

_NULL = "\\N"
_NO_INDEX = f"\t{_NULL}\n"  # a pair the session does not list


def record_key(line: str) -> str:
    """The Redis key a migration line ends with (its last column, before the newline)."""
    return line[line.rindex("\t") + 1 : -1]


class OrderPick:
    """A session's order lines, read pair by pair; then the rows to write and the strays."""

    def __init__(self) -> None:
        self._pairs: dict[str, dict[str, str]] = {}  # pair → Redis key → line: each record once
        self.order_ids: set[str] = set()  # after pick: the order ids written

    @property
    def lines(self) -> list[str]:
        """Every record's line, once."""
        return [line for held in self._pairs.values() for line in held.values()]

    def add(self, lines: Sequence[str]) -> None:
        """Take lines of one pair: a chunk as the codec reads it, every line of the pair it was
        read under (ValueError if its first and last lines say otherwise)."""
        if not lines:
            return
        symbol = lines[0].split("\t", 3)[2]
        if lines[-1].split("\t", 3)[2] != symbol:
            raise ValueError(f"order lines of {symbol} and another pair in one chunk")
        held = self._pairs.setdefault(symbol, {})
        for line in lines:
            held[line[line.rindex("\t") + 1 : -1]] = line

    def pick(self, pair_index: Mapping[str, int]) -> tuple[list[str], Counter[str], list[Stray]]:
        """(COPY lines for ``orders`` in order id order, columns ``ORDER_COPY_COLUMNS``; the
        records read per pair; the copies of an order id kept under another pair)."""
        kept: dict[str, tuple[str, str]] = {}  # order id → (pair, key) of the record kept
        rows: dict[str, str] = {}  # order id → its COPY line
        others: dict[str, list[tuple[str, str]]] = {}  # order id → (pair, key) of the others
        records: Counter[str] = Counter()
        for symbol in sorted(self._pairs):  # pairs by name: the first one keeps an order id
            held = self._pairs[symbol]
            records[symbol] = len(held)
            index = pair_index.get(symbol)
            suffix = _NO_INDEX if index is None else f"\t{index}\n"
            for key, line in held.items():
                order_id = line[: line.index("\t")]
                best = kept.get(order_id)
                if best is not None:
                    if best[0] != symbol or best[1] < key:
                        others.setdefault(order_id, []).append((symbol, key))
                        continue
                    others.setdefault(order_id, []).append(best)  # a smaller key, same pair
                kept[order_id] = (symbol, key)
                rows[order_id] = line[: line.rindex("\t")] + suffix
        self.order_ids = set(kept)
        strays = [
            Stray(symbol, key, f"order id {order_id} also recorded under {kept[order_id][0]}")
            for order_id, seen in others.items()
            for symbol, key in seen
        ]
        lines = sorted(rows.values())  # order id first: the primary key's order, each index
        return lines, records, strays  # page hot once


# The columns of a COPY line for ``orders`` made by OrderPick: a migration line without its
# key, then the pair's index in the session.
ORDER_COPY_COLUMNS = ("order_id", "session_id", "symbol", "side", "price", "amount", "filled",
                      "status", "kind", "client_order_id", "created_at", "pair_index")  # fmt: skip
# ... and for ``fills`` (FillPick.take): a migration line without its key.
FILL_COPY_COLUMNS = ("session_id", "order_id", "symbol", "side", "price", "quantity", "fee",
                     "timestamp", "trade_id")  # fmt: skip


class FillPick:
    """One session's fill lines, pair by pair, against the order ids it wrote."""

    def __init__(self, order_ids: set[str]) -> None:
        self._order_ids = order_ids
        self._executions: dict[tuple[str, str, str, str], str] = {}  # identity → line
        self._symbol: str | None = None
        self.received = 0  # lines, repeats and orphans included
        self.orphans: dict[str, Stray] = {}  # Redis key → stray, each record once

    @property
    def symbol(self) -> str | None:
        """The pair whose executions are held (None: none held)."""
        return self._symbol if self._executions else None

    def add(self, lines: Sequence[str]) -> None:
        """Take lines of the pair held (or of a new pair once the held one was taken)."""
        executions, order_ids, held_symbol = self._executions, self._order_ids, self._symbol
        self.received += len(lines)
        for line in lines:
            _, order_id, symbol, _, price, quantity, _, at, _ = line.split("\t", 8)
            if order_id not in order_ids:
                key = record_key(line)
                reason = f"fill references order {order_id}, which does not exist"
                self.orphans[key] = Stray(symbol, key, reason)
                continue
            if symbol != held_symbol:
                if executions:
                    raise ValueError(f"fills of {symbol} while {held_symbol} is held")
                held_symbol = self._symbol = symbol
            identity = (order_id, at, price, quantity)
            held = executions.setdefault(identity, line)
            if held is not line and _rank(line) < _rank(held):
                executions[identity] = line

    def take(self) -> list[str]:
        """The held pair's executions, one line each (with its key), in the unique key's
        order (order id first: the lines are of one session), and hold none."""
        lines = sorted(self._executions.values())
        self._executions = {}
        return lines


def _rank(line: str) -> tuple[bool, str, str]:
    """Which of two records of one execution is kept: one with a trade id, the smallest trade
    id, the smallest key (the conflict-safe path's ``ORDER BY trade_id NULLS LAST, key``)."""
    trade_id, key = line[:-1].split("\t")[-2:]
    return trade_id == _NULL, trade_id, key


def copy_text(lines: Sequence[str]) -> str:
    """Fill migration lines without their keys (``FILL_COPY_COLUMNS``), as one text."""
    return "\n".join([line[: line.rindex("\t")] for line in lines]) + "\n" if lines else ""
