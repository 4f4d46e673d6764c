# Sourced by the test servers' scripts (s3, ministack, azure, gcs): stop_pidfile FILE
# stops the process FILE names and waits (up to 5 s) for it to exit, so that its port is
# free when it returns (a zombie, dead but not yet reaped by its new parent, counts as
# exited); then FILE goes. Nothing happens without FILE.
stop_pidfile() {
    [ -f "$1" ] || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do
        grep -qs '^State:[[:space:]]*[^Z]' "/proc/$pid/status" || break
        sleep 0.1
    done
    rm -f "$1"
}
