"""The applet table: every program of the emulated busybox image, by name.

Importing this module registers the applets of :mod:`.applets_core` and :mod:`.applets_files` in
``APPLETS`` (name -> (function, is_generator)); ``sh``/``ash``/``bash`` are run by the interpreter
itself. Programs that are not here (cut, tr, sed, awk, ...) are "not found" (status 127) and reported
through ``Machine.missing``.
"""

from __future__ import annotations

from kubeharness.emulators.cri.shell import applets_core, applets_files
from kubeharness.emulators.cri.shell.appletbase import APPLETS, read_all, shell_quote, unbackslash

__all__ = ["APPLETS", "applets_core", "applets_files", "read_all", "shell_quote", "unbackslash"]
