"""Discrete-event simulator: the production scheduling code against modelled engines, in virtual time."""
