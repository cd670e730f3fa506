# Local stand-in for python:3.11-slim, built by images/build.sh only where no registry can be reached.
# Debian bookworm's own Python 3.11, shaped like the official image where our Dockerfiles rely on it
# (`python` on PATH, the venv module), and trusting the build host's CA bundle so that pip inside image builds
# gets through a TLS-intercepting proxy.
ARG DEBIAN_IMAGE=localhost/catsdogs-debian:bookworm
FROM ${DEBIAN_IMAGE}
# DL3008 (pin apt versions): the stand-in takes bookworm's current python3, like the image it replaces.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
