#!/bin/sh
# dmarc-milter postinstall. dpkg calls it with "configure" and the version
# being upgraded from (empty on a fresh install); rpm with 1 (install) or
# 2 (upgrade).
set -e

user=dmarc-milter
unit=dmarc-milter.service

case "$1" in
configure)
	pkg=deb
	if [ -z "$2" ]; then action=install; else action=upgrade; fi
	;;
1) pkg=rpm action=install ;;
[2-9]*) pkg=rpm action=upgrade ;;
*) exit 0 ;; # abort-upgrade, abort-remove...: nothing of ours to undo
esac

# A system user with no home and no login shell: the daemon needs no files
# of its own, only its socket.
if ! getent passwd "$user" >/dev/null; then
	if [ "$pkg" = deb ] && command -v adduser >/dev/null; then
		adduser --system --group --no-create-home --home /nonexistent --quiet "$user"
	else
		getent group "$user" >/dev/null || groupadd --system "$user"
		useradd --system --gid "$user" --no-create-home --home-dir /nonexistent \
			--shell /sbin/nologin "$user"
	fi
fi

# Postfix connects to a unix socket as the postfix user. The daemon gives
# its socket to socket_group ("postfix", mode 0660), and an unprivileged
# process may only chgrp to a group it is in, hence the membership; the
# other way round (postfix in our group) would change the MTA's user.
# Debian's smtpd is chrooted into /var/spool/postfix, so the socket lives
# in a directory of ours inside it, traversable by the postfix group only.
if getent group postfix >/dev/null; then
	if ! id -nG "$user" | tr ' ' '\n' | grep -qx postfix; then
		usermod -a -G postfix "$user"
	fi
	if [ -d /var/spool/postfix ]; then
		install -d -o "$user" -g postfix -m 0750 /var/spool/postfix/dmarc-milter
	fi
fi

if command -v systemctl >/dev/null; then
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload || true
	fi
	case "$pkg/$action" in
	deb/install)
		# Debian starts what it installs. Nothing reaches the daemon until
		# the MTA is told about it, except where the MTA already uses
		# 127.0.0.1:8893, OpenDMARC's usual port: OpenDMARC then still
		# holds it, the daemon cannot bind and systemd keeps retrying, so
		# the switch in deploy/OPERATIONS.md stops the daemon before
		# OpenDMARC. A later `systemctl disable` survives upgrades.
		systemctl enable "$unit" >/dev/null 2>&1 || true
		if [ -d /run/systemd/system ]; then
			systemctl start "$unit" ||
				echo "dmarc-milter: did not start; see journalctl -u dmarc-milter" >&2
		fi
		;;
	*/upgrade)
		# Only if running: SIGTERM lets sessions in flight finish.
		if [ -d /run/systemd/system ]; then
			systemctl try-restart "$unit" || true
		fi
		;;
	esac
fi
exit 0
