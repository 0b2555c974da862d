"""The build stage's output, as publishing reads it: finished builds and their manifests
(``manifest``)."""
