"""Ray Serve wiring: deployments, the request router and the application builder."""
