"""hybridctl-agent: the node daemon that samples NVML/psutil telemetry and runs jobs.

It is copied to GPU servers on its own, so it imports only the stdlib, psutil and
nvidia-ml-py (`pynvml`), never `hybridctl`.
"""

__version__ = "0.1.0"
PROTOCOL_VERSION = 1
