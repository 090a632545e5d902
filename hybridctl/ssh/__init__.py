"""Reaching node agents: asyncssh stream-local forwarding (or a local socket), behind one link type.
asyncssh's exceptions stop here; the rest of hybridctl sees HybridctlError subclasses."""
