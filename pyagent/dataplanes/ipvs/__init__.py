"""IPVS mode (see dataplane.py; needs CONFIG_IP_VS)."""
