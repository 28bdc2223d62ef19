"""Pure domain code: models, pricing, rounding, ids, allocation, P&L. Standard library only."""
