"""The agent's configuration: a KubeletConfiguration file read, validated and defaulted as kubelet does."""
