"""Node and pod stats: kubelet's Summary API (``stats/v1alpha1``) as typed values, the providers that fill it
(a real node's host figures, or an emulated node's configured capacity minus what the runtime's stats say
the pods use), served on ``/stats/summary`` and read by the eviction manager."""
