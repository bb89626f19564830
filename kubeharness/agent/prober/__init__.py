"""The prober: liveness, readiness and startup probes, as kubelet's ``pkg/kubelet/prober`` runs them.

- :mod:`.outcome`: what one probe run gives (success, warning, failure, unknown, and its output);
- :mod:`.timeout`: a probe's timeout on the agent's clock (virtual in tests);
- :mod:`.handlers`: the four handlers (exec through CRI ExecSync, httpGet, tcpSocket, grpc), as
  ``pkg/probe/*`` does them;
- :mod:`.results`: the results caches (one per probe kind) with get/set and an updates stream that fires
  only on change;
- :mod:`.worker`: one worker per (pod, container, probe kind), its ``run`` loop apart from its ``step``;
- :mod:`.manager`: adds and removes workers as pods come and go, and answers a container's ``ready`` and
  ``started`` for the status.
"""
