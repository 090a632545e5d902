"""hybridctl: a terminal cluster manager for GPU labs with on-prem servers and cloud spot bursting."""

import warnings

__version__ = "0.1.0"

# cryptography 51 deprecates DSA, and asyncssh 2.24 still names its DSA types at import time: every
# controller and TUI start would print five warnings a user can do nothing about. Only that message,
# only from asyncssh, is silenced (the pytest config does the same for the tests).
warnings.filterwarnings("ignore", message="DSA is deprecated", module=r"asyncssh(\.|$)")
