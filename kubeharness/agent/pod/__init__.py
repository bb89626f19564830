"""Pods as the agent reads them: the typed model, manifest defaulting and validation (probes and hooks
included), kubelet's labels and annotations, QoS classes and quantities, $(VAR) expansion."""
