"""The agent's HTTP side: the small HTTP server, the read-only port's answers, and the metrics registry."""
