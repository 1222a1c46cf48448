"""edgefleet fleet server: the control plane (registry, devices, API, broker, jobs)."""
