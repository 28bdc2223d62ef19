"""The Redis store: the only code that knows Redis key names."""
