# Shared by the scripts: installs what the stack and the tests need on Debian/Ubuntu.

# Mosquitto lives in /usr/sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/sbin"

ensure_mosquitto() {
  local missing=()
  command -v mosquitto >/dev/null || missing+=(mosquitto)
  command -v mosquitto_pub >/dev/null || missing+=(mosquitto-clients)
  install_packages "${missing[@]}"
}

# The browser test drives Debian's headless Chromium.
ensure_chromium() {
  command -v chromium >/dev/null || install_packages chromium
}

# The HTTPS tests fetch the pixel with curl, as a browser would (HTTP/2 over TLS).
ensure_curl() {
  command -v curl >/dev/null || install_packages curl
}

# The load-balancer tests put Debian's HAProxy in front of an edge.
ensure_haproxy() {
  command -v haproxy >/dev/null || install_packages haproxy
}

# The far-edge tests build their emulated links with ip (network namespaces, veth, TUN).
ensure_iproute2() {
  command -v ip >/dev/null || install_packages iproute2
}

# The cluster tests start RabbitMQ nodes of their own (Debian's 3.10.8, the MQTT plugin is bundled);
# the package's own service, if the install started one, is stopped so that it holds no port.
ensure_rabbitmq() {
  command -v rabbitmq-server >/dev/null && return
  install_packages rabbitmq-server
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" service rabbitmq-server stop >/dev/null 2>&1 || true
  # Stopping runs Erlang, which leaves an epmd daemon behind on the default port; no node uses it now.
  epmd -names 2>/dev/null | grep -q '^name ' || epmd -kill >/dev/null 2>&1 || true
}

install_packages() {
  [ $# -eq 0 ] && return
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing $*" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Writes the shipped mosquitto.conf (or $6, e.g. mosquitto/bridge/edge-site.conf) to $5 for a broker
# outside a container: plain MQTT on port $1, TLS on $2, persistence in $3, passwords and
# certificates from $4 (made by `scripts/secrets init`), the ACL from this checkout.
derive_mosquitto_conf() {
  local port=$1 tls_port=$2 data_dir=$3 secrets_dir=$4 out=$5 conf=${6:-mosquitto/mosquitto.conf}
  sed -e "s#^listener 1883\$#listener $port#" \
      -e "s#^listener 8883\$#listener $tls_port#" \
      -e "s#^persistence_location .*#persistence_location $data_dir/#" \
      -e "s#/mosquitto/secrets/#$secrets_dir/#" \
      -e "s#/mosquitto/config/#$PWD/mosquitto/#" \
      "$conf" > "$out"
  # As root Mosquitto switches to the 'mosquitto' user, who could not write $data_dir.
  [ "$(id -u)" -ne 0 ] || echo "user root" >> "$out"
}
