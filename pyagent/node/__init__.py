"""The node runtime: the agent (store -> sync runner -> dataplane), what it
learns about the node, and the wiring that composes a running node."""
