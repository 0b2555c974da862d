"""Deployment companion: a dual-primary DRBD storage repository shared by two dom0 hosts.

``pool.py`` reads and validates a ``pool.yaml`` once into frozen dataclasses, ``checks.py`` turns
the original recipe's warnings into findings, ``repo.py`` reads the published yum metadata for
the packages check, and ``render.py`` produces every file an operator needs, per host.
"""
