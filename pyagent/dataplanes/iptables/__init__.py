"""iptables mode (see dataplane.py); policy.py is shared by the rule-based modes."""
