"""The CRI conformance suite's machinery: targets (the emulator or any CRI endpoint), observations, report.

The specs themselves live in the repository's ``conformance/`` directory and run under pytest with
:mod:`.plugin`; the same spec runs against the emulator (default) and against a real runtime
(``--cri-endpoint unix://...``), and :mod:`.report` compares what both did.
"""
