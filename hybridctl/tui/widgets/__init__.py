"""Reusable widgets. They receive snapshots from their screen and never call the API."""
