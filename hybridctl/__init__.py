"""hybridctl: a terminal cluster manager for GPU labs with on-prem servers and cloud spot bursting."""

__version__ = "0.1.0"
