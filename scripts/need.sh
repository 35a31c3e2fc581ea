# Sourced by the other scripts: `need COMMAND:PACKAGE ...` installs, on Debian, the
# package of every command that is missing (as root; otherwise says what to install).
need() {
  local missing=()
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  ((${#missing[@]})) || return 0
  need_package "${missing[@]}"
}

# `need_package PACKAGE ...`: installs packages (also those whose presence no command
# shows, such as python3-venv).
need_package() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
  else
    echo "missing: $* (install them, e.g. apt-get install $*)" >&2
    exit 1
  fi
}
