"""mmops.entrypoints."""
