"""`python -m hybridctl_agent ...` is the same as `hybridctl-agent ...`."""

import sys

from hybridctl_agent.cli import main

sys.exit(main())
