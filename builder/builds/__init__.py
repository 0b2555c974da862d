"""Stage 3, the build: the pure planner (``plan``), the DRBD family recipes (``recipes``), the
build image and container (``container``, ``rpmbuild``), the runs of one build (``drbdbuild``),
the post-build checks (``postbuild``) and the pipeline that runs them all (``pipeline``)."""
