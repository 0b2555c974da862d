"""Deployment companion: a dual-primary DRBD storage repository shared by two dom0 hosts.

``pool.py`` reads and validates a ``pool.yaml`` once into frozen dataclasses, ``checks.py`` turns
the original recipe's warnings into findings, ``repo.py`` reads the published yum metadata for
the packages check, ``render.py`` produces every file an operator needs, per host, and
``daytwo.py`` the runbook's steps for a pool in use (status, guard, split-brain recovery,
pool-master change, boot order, upgrades).
"""
