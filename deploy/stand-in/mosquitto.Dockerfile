# Stand-in for the official `eclipse-mosquitto` image where no registry is reachable (built by
# scripts/stand-in-images, never tagged with an official name): Debian's mosquitto on the Debian
# stand-in, with the official image's paths, user (uid/gid 1883), volumes, entrypoint and command,
# so compose.yml's mounts and health check work unchanged.
ARG DEBIAN_IMAGE=tracker-test/debian:bookworm
FROM ${DEBIAN_IMAGE}
# The user first, so that the package keeps it instead of making its own. The Debian release pins
# the packages.
# hadolint ignore=DL3008
RUN groupadd --system --gid 1883 mosquitto \
    && useradd --system --uid 1883 --gid 1883 --no-create-home --home-dir /var/empty \
       --shell /usr/sbin/nologin mosquitto \
    && apt-get update \
    && apt-get install -y --no-install-recommends mosquitto mosquitto-clients \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
    && printf 'listener 1883\nallow_anonymous false\n' > /mosquitto/config/mosquitto.conf \
    && chown -R mosquitto:mosquitto /mosquitto
COPY docker-entrypoint.sh /docker-entrypoint.sh
EXPOSE 1883
VOLUME ["/mosquitto/data", "/mosquitto/log"]
ENTRYPOINT ["/docker-entrypoint.sh"]
# Debian's mosquitto block-buffers its stdout log when it is a pipe; the official image's shows
# each line in `docker logs` as it is written.
CMD ["stdbuf", "-oL", "/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
