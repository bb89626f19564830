"""Garbage collection: dead containers, sandboxes and pod log directories (``containers``), unused images
(``images``), as kubelet's container GC (``pkg/kubelet/kuberuntime/kuberuntime_gc.go``) and image GC manager
(``pkg/kubelet/images/image_gc_manager.go``). Each module holds its policy as pure functions over what the
runtime lists, one pass as a step, and (for images) the loop on the agent's clock apart from it."""
