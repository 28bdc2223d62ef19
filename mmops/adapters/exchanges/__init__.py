"""Live exchanges through ccxt (Kraken first); the paper venue lives in ``mmops.adapters.paper``."""
