"""userspace mode: REDIRECT portals to an asyncio proxy (see dataplane.py)."""
