"""Stage 1 and 2, the inputs: fetch and verify downloads (``fetch``, ``checksums``), read the
kernel-devel RPM out of an ISO (``iso``) or pick it from a yum repository (``yumsource``,
``kernels``), extract its kernel build tree safely (``kernel``, ``kernel_memo``, with
:mod:`builder.rpm`'s payload reader), and
read a DRBD or drbd-utils source tarball once into the value the build is handed
(``sourcetarball``)."""
