"""The pod lifecycle event generator: relists the runtime, keeps the pods as observed, and turns changes into
events for the pod workers."""
