"""mmops.sim."""
