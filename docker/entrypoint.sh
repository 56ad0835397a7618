#!/bin/sh
# Container entrypoint: build the TensorRT engines the rig file names (first start, or after the
# graphs, TensorRT or GPU changed; kept otherwise), then run the daemon in the foreground.
#   BUSREF_RIG            rig file (default /config/rig.yaml); its inference.*_engine paths
#                         should point into the engine volume, e.g. /var/lib/busref/engines/fuse.engine
#   BUSREF_ENGINES        engine volume; holds the timing cache (default /var/lib/busref/engines)
#   BUSREF_BUILD_ENGINES  0 = do not build (ONNX Runtime only)
#   BUSREF_ENGINE_ARGS    extra 'busref export engine' options, e.g. "--precision fp32" or "--dla-core 0"
# Arguments are passed on to 'busref run', e.g. --endpoint 'tcp://*:5555' --log-json.
set -eu
rig="${BUSREF_RIG:-/config/rig.yaml}"
engines="${BUSREF_ENGINES:-/var/lib/busref/engines}"

if [ ! -f "$rig" ]; then
    echo "busref-entrypoint: no rig file at $rig: mount yours there (docs/deploy.md)" >&2
    exit 2
fi
if [ "${BUSREF_BUILD_ENGINES:-1}" = 1 ]; then
    mkdir -p "$engines"
    # shellcheck disable=SC2086  # BUSREF_ENGINE_ARGS is a list of options
    busref export engine --rig "$rig" --reuse --timing-cache "$engines/timing.cache" ${BUSREF_ENGINE_ARGS:-} \
        || echo "busref-entrypoint: engines not built (reason above); the daemon uses ONNX Runtime" >&2
fi
exec busref run --rig "$rig" "$@"
