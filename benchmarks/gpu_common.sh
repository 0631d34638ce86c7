# benchmarks/gpu_common.sh - what benchmarks/gpu_check.sh and gpu_e2e.sh both do on a GPU machine,
# sourced by each after it has set PY (the interpreter), SITE (where carried wheels go),
# SUMMARY (the summary file), T0 (its start, epoch seconds) and DEADLINE (its end).

# lim N: N seconds, or less when the overall deadline is nearer (at least 10).
lim() { local left=$(( DEADLINE - $(date +%s) - 5 )); [ "$left" -lt "$1" ] && echo $(( left < 10 ? 10 : left )) || echo "$1"; }
left() { echo $(( DEADLINE - $(date +%s) )); }
el() { echo "$(( $(date +%s) - T0 ))s"; }
note() { echo "$*" | tee -a "$SUMMARY"; }

# install_wheels WHL...: pip --target $SITE; should pip be missing or fail, unpack them instead
# (these wheels have no .data/ part, so unpacking into the target is what pip --target does).
install_wheels() {
    timeout -k 5 "$(lim 90)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"
    local rc=$?
    echo "pip install rc=$rc: $# wheels: $*"
    if [ "$rc" != 0 ]; then
        mkdir -p "$SITE"
        "$PY" -c 'import sys, zipfile
for w in sys.argv[2:]:
    zipfile.ZipFile(w).extractall(sys.argv[1])' "$SITE" "$@"
        echo "unpacked with zipfile instead: rc=$?"
    fi
}

# install_typing_extensions_if_old: pydantic needs typing_extensions >= 4.16; install the carried
# .whl/optional one only when the machine's is older (a newer one of ours could break its packages).
install_typing_extensions_if_old() {
    if compgen -G ".whl/optional/typing_extensions-*.whl" > /dev/null && "$PY" -c '
import importlib.metadata as m, re, sys
v = m.version("typing_extensions"); print("typing_extensions on the machine:", v)
sys.exit(0 if tuple(int(x) for x in re.findall(r"\d+", v)[:2]) < (4, 16) else 1)'; then
        install_wheels .whl/optional/typing_extensions-*.whl
    fi
}

# build_native: ext/_native for the machine's python (cmake, ninja and nanobind are in its image);
# prints "build rc=N" last. On failure ext falls back to ext/_reference (same results, slower hashing).
build_native() {
    echo "== build ext/_native for $("$PY" -c 'import sys; print(sys.version.split()[0])')"
    timeout "$(lim 120)" cmake -S . -B /tmp/extbuild -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DPython_EXECUTABLE="$(command -v "$PY")" -DSTREAMSCORE_WERROR=OFF 2>&1 | tail -15 \
    && timeout "$(lim 120)" cmake --build /tmp/extbuild 2>&1 | tail -15 \
    && cp -v /tmp/extbuild/ext/_native*.so ext/
    echo "build rc=$?"
}
