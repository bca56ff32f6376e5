"""Engine replicas: one interface, a CPU mock and (later) vLLM."""
