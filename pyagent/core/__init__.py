"""The pure core: objects in, per-node desired state out (parse, store,
selection, state), and what reads it offline (plan, trace). No I/O
besides reading input files; nothing here imports another pyagent package
but `ebpf`-free helpers of its own."""
