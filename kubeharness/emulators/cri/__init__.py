"""The CRI runtime emulator: a ``runtime.v1`` RuntimeService and ImageService on a unix socket."""
