"""Container log rotation: kubelet's container log manager (``pkg/kubelet/logs``).

- ``rotation``: the rules, as pure functions over file names and sizes (which file is rotated, what a
  rotated file is called, which files are removed, which are compressed).
- ``files``: what the rules do to the filesystem (listing a log's siblings, gzip through ``.tmp``).
- ``manager``: :class:`ContainerLogManager`, one pass over the running containers (``rotate_once``, the
  step a test calls) and the loop that repeats it every ``containerLogMonitorInterval`` on the agent's
  clock (``run``); ``clean`` removes every log file of one container.
"""

from kubeharness.agent.logs.manager import ContainerLogManager
from kubeharness.agent.logs.rotation import LogRotatePolicy

__all__ = ["ContainerLogManager", "LogRotatePolicy"]
