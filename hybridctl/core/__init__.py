"""The pure core: job model, spec validation, state machine and scheduler. No I/O lives here."""
