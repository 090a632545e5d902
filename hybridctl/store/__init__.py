"""Persistence: the SQLite store (the only code that speaks SQL) and its migrations."""
