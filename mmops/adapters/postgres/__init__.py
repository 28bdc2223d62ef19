"""The PostgreSQL warehouse, its pool and its versioned SQL migrations."""
