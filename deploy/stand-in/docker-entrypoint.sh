#!/bin/sh
# The official eclipse-mosquitto entrypoint's behaviour: as root, hand everything under /mosquitto
# to the mosquitto user (which is what makes read-only mounts there print errors), then run the command.
set -e
if [ "$(id -u)" = '0' ]; then
  [ -d /mosquitto ] && chown -R mosquitto:mosquitto /mosquitto || true
fi
exec "$@"
