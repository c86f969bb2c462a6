"""What the agent reports, and who reads it: /healthz, /metrics, the
health-check node ports and the status file, all fed by the agent's
typed sync report (report.py)."""
