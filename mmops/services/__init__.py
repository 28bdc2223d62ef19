"""mmops.services."""
