# shellcheck shell=bash
# The Debian mirror this machine installs from, for the scripts that fetch
# from it themselves (test/matrix.sh's debootstrap, test/cassert.sh's
# source package): the first deb source whose path ends in /debian
# (one-line or deb822 format), or IDEM_MIRROR.  Sourced, not run; the
# caller defines die().
mirror() {
    if [ -n "${IDEM_MIRROR:-}" ]; then echo "$IDEM_MIRROR"; return; fi
    local m
    m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
        awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
    [ -n "$m" ] || m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
        awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /\/debian\/?$/) { print $i; exit } }')
    [ -n "$m" ] || die "no Debian mirror in /etc/apt/sources.list*; set IDEM_MIRROR"
    echo "${m%/}"
}
