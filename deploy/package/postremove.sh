#!/bin/sh
# dmarc-milter postremove. dpkg: "remove", then "purge" (or "upgrade"...);
# rpm: 0 on erase, 1 on upgrade.
set -e

case "$1" in
remove | purge | 0)
	if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	;;
esac

# The socket directory holds nothing but the socket. The user and group
# stay, as Debian does for system users: files they own may remain.
case "$1" in
purge | 0)
	rm -rf /var/spool/postfix/dmarc-milter
	;;
esac
exit 0
