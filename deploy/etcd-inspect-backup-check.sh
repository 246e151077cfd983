#!/usr/bin/env bash
# Scans the newest etcd backup with etcd-inspect and fails when any Secret in it is
# not under the KMS v2 provider kube-kms (plaintext, an old aescbc key, another
# plugin, plaintext left in older revisions...) or, if ALLOWED_KEY_IDS is set, under
# a key_id not in that list.
#
# Run it from cron/a systemd timer on the host that keeps the backups. The CronJob in
# deploy/etcd-inspect-cronjob.yaml does the same in a cluster (the same selection of
# the newest backup, then etcd-inspect from the kube-kms image, which has no shell).
#
# Settings (environment):
#   BACKUP_DIR        directory with the backups        (default /var/lib/etcd-backup)
#   BACKUP_PATTERN    glob of backup file names         (default *.db)
#   ETCD_INSPECT      the etcd-inspect binary           (default etcd-inspect, from PATH)
#   REQUIRE_PROVIDER  provider[:name] every Secret must use (default kms-v2:kube-kms)
#   ALLOWED_KEY_IDS   comma-separated key_ids allowed   (default: any)
#   OUTPUT_FORMAT     table or json (JSON Lines)        (default table)
#
# Exit status: 0 clean, 1 findings, 2 error (no backup, unreadable file, bad
# settings): the same as etcd-inspect's, so a scheduler or alert can tell them apart.
set -euo pipefail

backup_dir="${BACKUP_DIR:-/var/lib/etcd-backup}"
backup_pattern="${BACKUP_PATTERN:-*.db}"
etcd_inspect="${ETCD_INSPECT:-etcd-inspect}"
require_provider="${REQUIRE_PROVIDER:-kms-v2:kube-kms}"
allowed_key_ids="${ALLOWED_KEY_IDS:-}"
output_format="${OUTPUT_FORMAT:-table}"

log() {
    printf '%s etcd-inspect-backup-check: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >&2
}

if [[ ! -d "$backup_dir" ]]; then
    log "ERROR: backup directory $backup_dir does not exist (set BACKUP_DIR)"
    exit 2
fi
if ! command -v "$etcd_inspect" >/dev/null 2>&1; then
    log "ERROR: $etcd_inspect not found or not executable (set ETCD_INSPECT)"
    exit 2
fi

# The newest regular file matching the pattern, by modification time. A loop with
# -nt instead of parsing `ls` output: safe for any file name, no GNU-only flags.
newest=""
shopt -s nullglob
for candidate in "$backup_dir"/$backup_pattern; do
    [[ -f "$candidate" ]] || continue
    if [[ -z "$newest" || "$candidate" -nt "$newest" ]]; then
        newest="$candidate"
    fi
done
shopt -u nullglob

if [[ -z "$newest" ]]; then
    log "ERROR: no backup matching '$backup_pattern' in $backup_dir: is the backup job running?"
    exit 2
fi

args=(scan --file "$newest" --format "$output_format" --require-provider "$require_provider")
if [[ -n "$allowed_key_ids" ]]; then
    args+=(--allowed-key-ids "$allowed_key_ids")
fi

log "scanning $newest"
status=0
"$etcd_inspect" "${args[@]}" || status=$?

case "$status" in
    0)
        log "OK: $newest is clean: every Secret is under $require_provider${allowed_key_ids:+ with an allowed key_id}"
        ;;
    1)
        log "FINDINGS: $newest holds Secrets that are not under $require_provider${allowed_key_ids:+ or use a key_id outside $allowed_key_ids} (report above); migrate them and check again"
        ;;
    *)
        log "ERROR: etcd-inspect could not scan $newest (exit status $status)"
        status=2
        ;;
esac
exit "$status"
