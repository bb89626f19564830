"""The v1 PodStatus the agent reports for a pod."""
