#!/bin/sh
# keepalived `notify` script of a ringlb pair: appends one line per VRRP transition to LOGFILE
# (and to syslog when `logger` is there).
#
# keepalived calls it as: ha-notify.sh LOGFILE TYPE NAME STATE PRIORITY
#   TYPE is INSTANCE or GROUP, NAME the vrrp_instance, STATE MASTER, BACKUP, FAULT or STOP.
log=$1
shift
line="$(date -u +%Y-%m-%dT%H:%M:%S.%NZ) $(hostname) $1 $2 $3 priority=${4:-?}"
echo "$line" >> "$log"
command -v logger >/dev/null 2>&1 && logger -t ringlb-vrrp "$line"
exit 0
