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

install_packages() {
  [ $# -eq 0 ] && return
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  echo "installing $*" >&2
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

# Writes the shipped mosquitto.conf to $3 with the listener on port $1 and persistence in $2.
derive_mosquitto_conf() {
  local port=$1 data_dir=$2 out=$3
  sed -e "s#^listener .*#listener $port#" \
      -e "s#^persistence_location .*#persistence_location $data_dir/#" \
      mosquitto/mosquitto.conf > "$out"
  # As root Mosquitto switches to the 'mosquitto' user, who could not write $data_dir.
  [ "$(id -u)" -ne 0 ] || echo "user root" >> "$out"
}
