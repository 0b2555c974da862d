"""xcp-drbd-builder: DRBD RPMs for Xen dom0 kernels, published as a signed yum repository."""

__version__ = "0.1.0"
