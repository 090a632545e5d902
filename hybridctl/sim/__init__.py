"""Simulated machines for demos and tests: a real agent with simulated GPUs behind a real (embedded)
SSH server on loopback. The controller cannot tell them from real servers; only the GPUs are fake."""
