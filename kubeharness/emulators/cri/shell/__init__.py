"""A busybox shell subset and a virtual container filesystem, run on a clock without real processes.

The CRI emulator uses this package to run the command lines of pod manifests faithfully: ``sh -c``
one-liners, exec probes such as ``cat /tmp/healthy``, plain applets like ``sleep 3600``. It is a pure
library: nothing here imports gRPC or the CRI wire code.

- :mod:`.vfs` / :mod:`.layout`: the container filesystem (image in memory, upper layer on disk, mounts);
- :mod:`.parser`: the shell language, parsed once into an AST (:mod:`.nodes`);
- :mod:`.interp`: the interpreter, a generator of clock waits (:func:`start` returns a :data:`Program`).
"""
