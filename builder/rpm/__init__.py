"""RPM format knowledge without ``rpm``, for every stage: ``header`` (lead, tags, digests),
``payload`` (cpio extraction) and ``version`` (rpmvercmp).  Imports nothing above the ground
floor (errors, files)."""
