"""Where pods come from: static pod manifests in a directory and at a URL (kubelet's file and http sources)."""
