#!/bin/sh
# Installs Qianzhi from the tarball on a machine without dpkg. Run as root
# from the unpacked folder:
#   ./install.sh
# It installs /usr/local/bin/qianzhi and the unit, creates the user qianzhi
# and /var/lib/qianzhi, and puts the example config at /etc/qianzhi/agent.toml
# unless one is there already (an upgrade keeps the operator's config; the
# new example goes beside it as agent.toml.new). It does not start the
# service. DESTDIR=/some/root installs into that tree instead, without
# creating the user or asking systemd anything (for packaging and tests).
set -eu
cd "$(dirname "$0")"

root=${DESTDIR:-}
if [ -z "$root" ] && [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root (or set DESTDIR)" >&2
    exit 1
fi

owner=""
if [ -z "$root" ]; then
    if ! getent passwd qianzhi >/dev/null; then
        useradd --system --user-group --home-dir /var/lib/qianzhi --no-create-home \
            --shell /usr/sbin/nologin --comment "Qianzhi exchange agent" qianzhi
    fi
    owner="-o qianzhi -g qianzhi"
fi

install -d "$root/usr/local/bin" "$root/etc/systemd/system" "$root/usr/local/share/doc/qianzhi"
install -m 0755 qianzhi "$root/usr/local/bin/qianzhi"
sed 's#^ExecStart=/usr/bin/qianzhi#ExecStart=/usr/local/bin/qianzhi#; s#file:/usr/share/doc/#file:/usr/local/share/doc/#' \
    qianzhi.service > "$root/etc/systemd/system/qianzhi.service"
chmod 0644 "$root/etc/systemd/system/qianzhi.service"
install -m 0644 README.md grafana-dashboard.json "$root/usr/local/share/doc/qianzhi/"

# shellcheck disable=SC2086 # $owner is empty or two options
install -d -m 0750 $owner "$root/var/lib/qianzhi" "$root/srv/qianzhi" "$root/srv/qianzhi/drop"
install -d -m 0750 "$root/etc/qianzhi" "$root/etc/qianzhi/tls"
for f in agent.toml catalog.toml; do
    if [ -e "$root/etc/qianzhi/$f" ]; then
        install -m 0640 "$f" "$root/etc/qianzhi/$f.new"
        echo "install.sh: kept /etc/qianzhi/$f; the new example is /etc/qianzhi/$f.new"
    else
        install -m 0640 "$f" "$root/etc/qianzhi/$f"
    fi
done
if [ -z "$root" ]; then
    chgrp -R qianzhi /etc/qianzhi
    systemctl daemon-reload 2>/dev/null || true
    echo "install.sh: edit /etc/qianzhi/agent.toml, check it with 'qianzhi --config /etc/qianzhi/agent.toml check',"
    echo "install.sh: then start the service with 'systemctl enable --now qianzhi'."
fi
