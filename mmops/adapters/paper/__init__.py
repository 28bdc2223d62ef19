"""The paper exchange: a real venue with its state in Redis, for demos, tests and benchmarks."""
