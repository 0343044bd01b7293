"""Where history is kept: in memory or in SQLite (``chatd.cluster`` keeps
it in Redis)."""
