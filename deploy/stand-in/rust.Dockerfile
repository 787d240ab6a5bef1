# Stand-in for the official `rust:*-slim-bookworm` image where no registry is reachable (built by
# scripts/stand-in-images, never tagged with an official name): the Debian stand-in, the C toolchain
# the slim image brings (ring's build script needs cc), and this machine's Rust toolchain.
ARG DEBIAN_IMAGE=tracker-test/debian:bookworm
FROM ${DEBIAN_IMAGE}
# The Debian release pins these packages.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY toolchain /usr/local/rust
# This network inspects TLS: cargo reaches crates.io only trusting the host's CA bundle.
COPY ca-certificates.crt /etc/ssl/host-ca-certificates.crt
# The official image's layout: cargo's home (and what `cargo install` puts there) under /usr/local/cargo.
ENV CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/host-ca-certificates.crt \
    CARGO_HTTP_CAINFO=/etc/ssl/host-ca-certificates.crt
