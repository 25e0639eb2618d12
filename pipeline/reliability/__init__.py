"""The fault harness: killed and disk-full stages (`faults`), hostile files (`hostile`),
fuzzed requests (`fuzz`), a real server under worker kills, soak and stop (`served_faults`),
and the report that runs them all (`suite`). Entry point: `python -m pipeline reliability`."""
