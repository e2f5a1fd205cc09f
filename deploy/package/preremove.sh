#!/bin/sh
# dmarc-milter preremove. dpkg: "remove" (or "upgrade", "deconfigure"...);
# rpm: 0 on erase, 1 on upgrade. Only a real removal stops the daemon.
set -e

case "$1" in
remove | 0)
	if command -v systemctl >/dev/null; then
		if [ -d /run/systemd/system ]; then
			systemctl stop dmarc-milter.service || true
		fi
		systemctl disable dmarc-milter.service >/dev/null 2>&1 || true
	fi
	;;
esac
exit 0
