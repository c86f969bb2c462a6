"""nftables mode (see dataplane.py)."""
