# shellcheck shell=bash
# The compose test's steps and checks (scripts/test-compose), run in its copy of the checkout with
# COMPOSE_PROJECT_NAME and the host ports set. Waits give up after WAIT_SECS (default 300) so that a
# hang fails with what it waited for; nothing is timed against a limit.

WAIT_SECS=${WAIT_SECS:-300}
# Every visit's referrer and user-agent carry its marker: https://compose-test.example/<m>, compose-test/<m>.
REFERRER_BASE=https://compose-test.example/
AGENT_BASE=compose-test/

step() { echo "== $*" >&2; }
fail() { echo "FAILED: $*" >&2; exit 1; }

sudo_if_needed() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

compose() { docker-compose "$@"; }

# Docker from Debian's docker.io, started when no engine answers. Its own client builds with BuildKit
# (cached stages, only the stages a target needs) without the buildx plugin a newer client asks for,
# so it goes first on PATH; Compose v1 hands builds to it.
ensure_engine() {
  if ! docker info >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || sudo -n true 2>/dev/null ||
      no_engine "no Docker engine answers, and starting one needs root or sudo"
    command -v dockerd >/dev/null || install_packages docker.io
    echo "starting dockerd (its log: /var/log/dockerd.log)" >&2
    sudo_if_needed sh -c 'setsid dockerd >>/var/log/dockerd.log 2>&1 &'
    local tries=0
    until docker info >/dev/null 2>&1; do
      tries=$((tries + 1))
      [ "$tries" -le 60 ] || no_engine "dockerd did not start (see /var/log/dockerd.log)"
      sleep 1
    done
  fi
  command -v docker-compose >/dev/null || install_packages docker-compose
  [ ! -x /usr/bin/docker ] || export PATH=/usr/bin:$PATH
  export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
}

# Where no engine can run, the test says why and stops; with COMPOSE_TEST=required (CI) it fails.
no_engine() {
  [ "${COMPOSE_TEST:-}" != required ] || fail "no Docker engine: $1"
  echo "compose test not run: $1" >&2
  exit 0
}

# Runs "$@" until it succeeds, or fails the test after WAIT_SECS naming what $1 describes.
wait_until() {
  local what=$1 deadline=$((SECONDS + WAIT_SECS))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || fail "gave up waiting for $what"
    sleep 1
  done
}

# The images, with cargo's output kept out of the test's unless the build fails.
build() {
  compose build > build.log 2>&1 || { tail -n 60 build.log >&2; fail "the images did not build"; }
}

build_cache_size() {
  docker system df --format '{{.Type}} {{.Size}}' | sed -n 's/^Build Cache //p'
}

# A TCP port nothing listens on (or, with $1, the first of $1 consecutive ones).
free_port() {
  python3 - "${1:-1}" <<'EOF'
import random, socket, sys
count = int(sys.argv[1])
while True:
    base = random.randrange(20000, 40000)
    sockets = []
    try:
        for port in range(base, base + count):
            s = socket.socket()
            s.bind(("", port))
            sockets.append(s)
    except OSError:
        continue
    finally:
        for s in sockets:
            s.close()
    if len(sockets) == count:
        print(base)
        break
EOF
}

# The containers of service $1 (all replicas), or of replica number $2.
containers() {
  local filters=(--filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
                 --filter "label=com.docker.compose.service=$1")
  [ $# -lt 2 ] || filters+=(--filter "label=com.docker.compose.container-number=$2")
  docker ps -q "${filters[@]}"
}

# Waits until every container of the services named is running and healthy, then notes their volumes.
wait_healthy() {
  local service
  for service in "$@"; do
    wait_until "$service to be healthy" all_healthy "$service"
  done
  remember_volumes
}

all_healthy() {
  local ids id
  ids=$(containers "$1")
  [ -n "$ids" ] || return 1
  for id in $ids; do
    [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$id")" = healthy ] || return 1
  done
}

# Every volume the project's containers have mounted so far, and every image built for them (all but
# the broker's), for the final check that none is left.
remember_volumes() {
  local ids
  ids=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  [ -n "$ids" ] || return 0
  # shellcheck disable=SC2086 # one argument per container id
  docker inspect -f '{{range .Mounts}}{{if .Name}}{{.Name}}{{"\n"}}{{end}}{{end}}' $ids >> volumes.seen
  # shellcheck disable=SC2086
  docker inspect -f '{{index .Config.Labels "com.docker.compose.service"}} {{.Image}}' $ids |
    awk '$1 != "mosquitto" { print $2 }' >> images.seen
}

# The project's named volume $1 (e.g. visits), read through a throwaway container.
volume_name() {
  docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.volume=$1"
}

log_lines() {
  docker run --rm -v "$(volume_name visits):/data:ro" "$DEBIAN_IMAGE" cat /data/visits.log
}

broker_log_is_clean() {
  local log noise
  # Read whole first: `grep -q` in a pipe would stop the writer early, which pipefail counts as failure.
  log=$(compose logs --no-color mosquitto)
  # Its log level (notice) shows connections, not its start-up; the health check has connected by now.
  grep -q "New client connected" <<<"$log" || fail "the broker's log is empty: no connection logged"
  noise=$(grep -iE 'error|warning|read-only|denied|chown' <<<"$log" || true)
  [ -z "$noise" ] || fail "the broker's start-up log has error lines:"$'\n'"$noise"
}

# The services' images under 100 MB each; prints their sizes, their binaries' and the broker image's.
check_image_sizes() {
  local service image size binary
  for service in pixel-edge store-sink mosquitto; do
    image=$(docker inspect -f '{{.Image}}' "$(containers "$service" | head -n 1)")
    size=$(docker image inspect -f '{{.Size}}' "$image")
    if [ "$service" = mosquitto ]; then
      # Whatever MOSQUITTO_IMAGE is; not ours to keep small.
      echo "image size: $service $((size / 1000000)) MB" >&2
      continue
    fi
    binary=$(docker run --rm --entrypoint stat "$image" -c %s "/usr/local/bin/$service")
    echo "image size: $service $((size / 1000000)) MB (its binary $((binary / 1000000)) MB)" >&2
    [ "$size" -lt 100000000 ] || fail "the $service image is over 100 MB"
  done
}

# A visit over $1 (http, or https with HTTP/2) to host port $2, marked $3. Fails unless the pixel answers.
visit() {
  visit_quiet "$@" || fail "the edge on port $2 did not answer visit $3 over $1"
}

visit_quiet() {
  local scheme=$1 port=$2 marker=$3 args=(-fsS -o /dev/null -w '%{http_version}')
  [ "$scheme" = http ] || args+=(--http2 --cacert mosquitto/secrets/ca.crt)
  local version
  version=$(curl "${args[@]}" -H "Referer: $REFERRER_BASE$marker" -A "$AGENT_BASE$marker" \
    "$scheme://127.0.0.1:$port/track") || return 1
  [ "$scheme" = http ] || [ "$version" = 2 ] || fail "visit $marker over HTTPS used HTTP/$version, not HTTP/2"
}

# The log's lines for marker $1 (the user-agent field, which the ip field follows).
lines_of() {
  grep -F "|$AGENT_BASE$1|" || true
}

has_lines() {
  local log marker
  log=$(log_lines) || return 1
  for marker in "$@"; do
    [ -n "$(lines_of "$marker" <<<"$log")" ] || return 1
  done
}

wait_for_lines() {
  wait_until "visits $* in the log" has_lines "$@"
}

# The visit marked $1 is one exact line: its time, the headers as sent, and the address the edge saw
# (the project network's gateway, through which Docker forwards published ports).
check_line() {
  local gateway line
  gateway=$(docker network inspect -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}' "${COMPOSE_PROJECT_NAME}_default")
  line=$(log_lines | lines_of "$1")
  [[ $line =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{7}Z\|(.*)$ ]] ||
    fail "visit $1: no line with a time of the log's format: '$line'"
  [ "${BASH_REMATCH[1]}" = "$REFERRER_BASE$1|$AGENT_BASE$1|$gateway" ] ||
    fail "visit $1: line '$line', expected '<time>|$REFERRER_BASE$1|$AGENT_BASE$1|$gateway'"
}

exactly_once() {
  local log marker count
  log=$(log_lines)
  for marker in "$@"; do
    count=$(lines_of "$marker" <<<"$log" | wc -l)
    [ "$count" -eq 1 ] || fail "visit $marker is in the log $count times"
  done
}

# mosquitto_sub on the host as `monitor`, on the plain listener published on the host's loopback.
monitor_start() {
  [ -z "${monitor_pid:-}" ] || kill "$monitor_pid" 2>/dev/null || true
  # Line-buffered: its debug lines (SUBACK) are what says the subscription is in place.
  stdbuf -oL mosquitto_sub -d -h 127.0.0.1 -p "$MQTT_PORT" -u monitor -P "$(cat mosquitto/secrets/monitor.password)" \
    -t 'tracker/visits/#' -v > monitor.out 2>&1 &
  monitor_pid=$!
  wait_until "the monitor's subscription" grep -aq SUBACK monitor.out
}

monitor_has() {
  local marker
  for marker in "$@"; do
    grep -aqF "\"user_agent\":\"$AGENT_BASE$marker\"" monitor.out || return 1
  done
}

monitor_saw() {
  wait_until "the monitor to see visits $*" monitor_has "$@"
}

# The edge id the monitor saw on visit $1. (grep -a throughout: what mosquitto_sub -d writes can hold
# bytes that make grep call the file binary and print no line.)
monitor_edge_of() {
  grep -aF "\"user_agent\":\"$AGENT_BASE$1\"" monitor.out | grep -o '"edge":"[^"]*"' | head -n 1 | cut -d'"' -f4
}

anonymous_refused() {
  local out
  if out=$(mosquitto_pub -h 127.0.0.1 -p "$MQTT_PORT" -t tracker/visits/anonymous -m x 2>&1); then
    fail "an anonymous client published on the plain listener"
  fi
  grep -q "not authorised" <<<"$out" || fail "plain listener, anonymous: '$out' (expected not authorised)"
  if out=$(mosquitto_pub -h 127.0.0.1 -p "$MQTT_TLS_PORT" --cafile mosquitto/secrets/ca.crt \
      -t tracker/visits/anonymous -m x 2>&1); then
    fail "an anonymous client published on the TLS listener"
  fi
  grep -q "not authorised" <<<"$out" || fail "TLS listener, anonymous: '$out' (expected not authorised)"
}

# SIGKILL to service $1's process from the host, as a crash: the restart policy brings it back.
crash() {
  local id restarts
  id=$(containers "$1")
  restarts=$(docker inspect -f '{{.RestartCount}}' "$id")
  sudo_if_needed kill -s SIGKILL "$(docker inspect -f '{{.State.Pid}}' "$id")"
  wait_until "$1 to be restarted after its crash" restarted "$id" "$restarts"
}

restarted() {
  [ "$(docker inspect -f '{{.RestartCount}} {{.State.Running}}' "$1")" = "$(($2 + 1)) true" ]
}

# $1 edges: more than one on host port ranges (as the README tells operators), one on the fixed ports.
# Only the edges (and what they depend on): a sink stopped by the test stays stopped.
scale_edges() {
  if [ "$1" -gt 1 ]; then
    local http https
    http=$(free_port "$1") https=$(free_port "$1")
    EDGE_PORTS=$http-$((http + $1 - 1)) EDGE_HTTPS_PORTS=$https-$((https + $1 - 1)) \
      compose up -d --scale "pixel-edge=$1" pixel-edge
  else
    compose up -d --scale pixel-edge=1 pixel-edge
  fi
  wait_healthy pixel-edge
  [ "$(containers pixel-edge | wc -l)" -eq "$1" ] || fail "not $1 edges running"
}

# The host port of replica $1's plain HTTP, as the README tells operators to find it.
replica_port() {
  compose port --index="$1" pixel-edge 8080 | cut -d: -f2
}

# A visit through each of $1 replicas, marked $2-<replica number>.
visit_replicas() {
  local i
  for i in $(seq "$1"); do
    visit http "$(replica_port "$i")" "$2-$i"
  done
}

# One visit through each of $1 replicas: each lands, and the monitor sees each under its replica's
# own edge id (edge/<its host name>).
scaled_visits() {
  local i host ids=()
  monitor_start
  visit_replicas "$1" replica
  wait_for_lines $(seq -f 'replica-%g' "$1")
  monitor_saw $(seq -f 'replica-%g' "$1")
  for i in $(seq "$1"); do
    host=$(docker inspect -f '{{.Config.Hostname}}' "$(containers pixel-edge "$i")")
    [ "$(monitor_edge_of "replica-$i")" = "edge/$host" ] ||
      fail "replica $i's visit came with edge id '$(monitor_edge_of "replica-$i")', not edge/$host"
    ids+=("edge/$host")
  done
  [ "$(printf '%s\n' "${ids[@]}" | sort -u | wc -l)" -eq "$1" ] || fail "edge ids not distinct: ${ids[*]}"
  echo "edge ids: ${ids[*]}" >&2
}

# The spool directories of the edges gone (every one on the spools volume but the running edge's)
# come to be removed: an edge removes its spool when it stops with nothing unconfirmed, and the edge
# left adopts the spools of those that could not deliver (edge.orphan_after_secs, 5 s here) and
# removes each once the sink confirmed it all.
spools_gone() {
  local deadline=$((SECONDS + WAIT_SECS)) left
  until left=$(spools_of_edges_gone) && [ -z "$left" ]; do
    [ "$SECONDS" -lt "$deadline" ] || fail "spools of edges gone still on the volume: $left"
    sleep 1
  done
  echo "no spool directory left but the running edge's ($(live_edge))" >&2
}

spools_of_edges_gone() {
  local live
  live=$(live_edge)
  docker run --rm -v "$(volume_name edge-spool):/spool:ro" "$DEBIAN_IMAGE" ls -1 /spool/edge | grep -vxF "$live" || true
}

# The host name of the one edge running.
live_edge() {
  docker inspect -f '{{.Config.Hostname}}' "$(containers pixel-edge)"
}

# The running edge said which spools it adopted, and that it delivered them.
adopted_logged() {
  local log
  log=$(compose logs --no-color pixel-edge)
  grep -q "adopting the orphaned spool of edge edge/" <<<"$log" || fail "the edge logged no adoption"
  grep -q "adopted the orphaned spool of edge edge/" <<<"$log" || fail "the edge logged no adoption done"
  grep "adopted the orphaned spool of edge" <<<"$log" | sed 's/^/  /' >&2
}

# Visits sent one after another while the sink is SIGKILLed and the broker restarted: each is
# answered, and each lands exactly once.
visits_through_faults() {
  : > sent
  : > unanswered
  touch flowing
  (i=0
   while [ -e flowing ]; do
     i=$((i + 1))
     if visit_quiet http "$EDGE_PORTS" "flow-$i" 2>/dev/null; then echo "flow-$i" >> sent; else echo "flow-$i" >> unanswered; fi
   done) &
  local loader=$!
  sent_at_least 20
  crash store-sink
  sent_at_least $(($(wc -l < sent) + 20))
  compose restart mosquitto
  sent_at_least $(($(wc -l < sent) + 20))
  rm flowing
  wait "$loader"
  wait_healthy mosquitto store-sink pixel-edge
  [ ! -s unanswered ] || fail "the pixel did not answer $(wc -l < unanswered) visits during the faults"
  wait_until "all $(wc -l < sent) visits sent through the faults in the log" all_flow_landed
  local duplicates
  duplicates=$(log_lines | grep -o "|${AGENT_BASE}flow-[0-9]*|" | sort | uniq -d)
  [ -z "$duplicates" ] || fail "visits logged more than once: $duplicates"
  echo "$(wc -l < sent) visits through a sink crash and a broker restart: each logged once" >&2
}

sent_at_least() {
  wait_until "$1 visits sent" sent_count_is_at_least "$1"
}

sent_count_is_at_least() {
  [ "$(wc -l < sent)" -ge "$1" ]
}

all_flow_landed() {
  local missing
  missing=$(comm -23 <(sort sent) <(log_lines | grep -o "|${AGENT_BASE}flow-[0-9]*|" | cut -d/ -f2 | tr -d '|' | sort))
  [ -z "$missing" ]
}

# `down -v --rmi local`: no container, network, volume (named, or anonymous ones seen during the test)
# or image built for the project is left.
down_leaves_nothing() {
  local left volume image
  remember_volumes
  compose down -v --rmi local
  left=$(docker ps -aq --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
         docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
         docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"
         docker images --format '{{.Repository}}' | grep -F "$COMPOSE_PROJECT_NAME"
         for volume in $(sort -u volumes.seen); do docker volume ls -q --filter "name=^$volume\$"; done)
  [ -z "$left" ] || fail "left after down -v --rmi local: $left"
  # The images the warm rebuild replaced lost their names to the new ones, so --rmi local does not
  # see them: the test's own leftovers, removed here.
  for image in $(sort -u images.seen); do
    ! docker image inspect "$image" >/dev/null 2>&1 || docker rmi "$image" >/dev/null
  done
}

# On the way out, pass or fail: on failure what the services said, then everything the test made.
cleanup() {
  [ -z "${monitor_pid:-}" ] || kill "$monitor_pid" 2>/dev/null || true
  rm -f flowing
  if [ "$1" -ne 0 ]; then
    compose ps >&2 || true
    compose logs --no-color --tail=40 >&2 || true
  fi
  compose down -v --rmi local --remove-orphans >/dev/null 2>&1 || true
  [ ! -s volumes.seen ] || sort -u volumes.seen | xargs -r docker volume rm -f >/dev/null 2>&1 || true
  [ ! -s images.seen ] || sort -u images.seen | xargs -r docker rmi -f >/dev/null 2>&1 || true
  cd / && rm -rf "$work"
}
