"""Operations: metrics and their Prometheus exporter, logging (roles, rate
limits) and the outage log plugins use. Imports nothing of the runner but
settings, so every other room may use it.
"""
