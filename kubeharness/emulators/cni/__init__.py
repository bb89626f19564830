"""The CNI emulator: ``kubeharness-cni``, an executable CNI plugin (spec 1.1.0) with host-local-like IPAM.

A runtime (containerd, libcni, the CRI emulator) executes it once per pod network operation with the
``CNI_*`` environment variables and the network configuration on stdin, as the CNI spec says. It runs
in one of two modes chosen by the configuration: ``emulated`` (addresses only, no kernel changes, so
loopback ranges such as 127.0.0.0/8 serve emulated pods) or ``real`` (a veth pair into the pod's network
namespace). Faults from a shared fault plan apply per command. The package is imported on every pod
operation: its modules import only what the command at hand needs.

    main       the entry point: read, dispatch, print the result or the error
    errors     the CNI error result and the plugin's own codes
    invocation the CNI_* environment
    netconf    the network configuration on stdin, versions
    ranges     address ranges and the allocation order
    store      the on-disk allocation store (file lock, atomic writes)
    result     result documents in each spec version, chaining
    commands   ADD, DEL, CHECK, STATUS, GC
    kernel     real mode: veth pairs through iproute2
    faults     the fault plan, with the engine's counters kept on disk between invocations
    forkserver the fast path's daemon: a fork of the warm plugin per invocation (``kubeharness cni serve``)
    forkproto  the wire protocol between the C shim and the fork server
    shim       building and installing the C shim (cnishim.c) that talks to it (``kubeharness cni install``)
"""
