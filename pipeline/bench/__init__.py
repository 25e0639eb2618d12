"""The latency benchmark: engines timed in process (`engines`, `latency`), cold start in a
fresh process (`cold`), the served endpoint under load (`served`, `loadgen`,
`locust_worker`), and the reports (`report`). Entry point: `python -m pipeline bench`."""
