# The builder itself as an image, for CI jobs that run `build` and `publish`:
#
#   docker build -t xcp-drbd-builder .
#   docker run --rm -v /var/run/docker.sock:/var/run/docker.sock \
#       -v "$PWD:$PWD" -w "$PWD" xcp-drbd-builder build --xcp 1.5 --drbd 8.4.1 \
#       --cache "$PWD/.cache" --artifacts "$PWD/artifacts"
#
# `build` starts its build containers on the host's engine through the mounted socket. That
# engine reports the host's name, not this container's, so the build inputs are uploaded into
# each build container rather than bind-mounted (docs/engines.md); $PWD:$PWD keeps
# the cache and artifacts on the host at the paths the tool prints.
# `publish` signs on this container's host side of the pipeline, never in a build container:
# mount the GnuPG home (read-only is not enough for gpg-agent) and pass --gnupg-home.
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}

# rpm, rpmsign, rpmkeys and createrepo_c for publish (Debian's createrepo_c still writes the
# SHA-1 checksums EL5's yum needs); gnupg for signing, gnupg1 for the V3 signatures EL5's rpm 4.4
# verifies; the Docker CLI is not needed (the SDK talks to the socket).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv rpm createrepo-c gnupg gpg-agent gnupg1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# Behind a TLS-intercepting proxy, put its CA certificate in the build context as
# extra-ca.crt (any extra-ca*.crt): pip then trusts it. Without one, nothing changes.
COPY pyproject.toml README.md extra-ca*.crt /opt/xcp-drbd-builder/
RUN for ca in /opt/xcp-drbd-builder/extra-ca*.crt; do \
      [ -f "$ca" ] && cp "$ca" /usr/local/share/ca-certificates/ || true; \
    done \
 && update-ca-certificates >/dev/null
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt
COPY builder /opt/xcp-drbd-builder/builder
COPY specs /opt/xcp-drbd-builder/specs
COPY containers /opt/xcp-drbd-builder/containers
# Installed, not editable: the registry (specs/) and the build contexts (containers/) are
# package data of the installed package. The sources are removed once installed, so the
# check below runs the installed tool on its own.
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /opt/xcp-drbd-builder \
 && rm -rf /opt/xcp-drbd-builder \
 && cd / && /opt/venv/bin/python -m builder targets >/dev/null

ENV PATH=/opt/venv/bin:$PATH
# -P: the working directory is not put on sys.path, so the installed tool runs even where
# the working directory is a checkout of this repository (the CI jobs mount theirs there).
ENTRYPOINT ["python3", "-P", "-m", "builder"]
CMD ["--help"]
