"""The terminal UI (`hybridctl` with no command): a Textual client of the controller's local API.

Nothing here writes SQLite or imports the controller: every read and action is a request through
`control.client.Client`, made from thread workers in `tui/data.py`."""
