"""Stage 4, publishing: sign the built RPMs (``sign``) into the package store (``store``),
make and sign the metadata, switch the live version atomically (``publisher``), record each
build's provenance (``provenance``) and audit the served tree (``verify``)."""
