#!/bin/sh
# Sets up one Vagrant machine of a fleet cluster (run by `vagrant up` as root).
#
# usage: provision.sh PUBLIC_IP ETCD_SERVERS METADATA etcd|member [AGENT_TTL]
#
# Uses the project's own files, synced into the machine: the release binaries in
# /opt/fleet-release and fleetd/dist in /opt/fleet-dist (the units, the TCP drop-in and the
# fleet.conf generator the local nspawn cluster uses too).
set -eu
if [ $# -lt 4 ] || [ $# -gt 5 ]; then
    echo "usage: provision.sh PUBLIC_IP ETCD_SERVERS METADATA etcd|member [AGENT_TTL]" >&2
    exit 2
fi
ip=$1
etcd=$2
metadata=$3
role=$4
agent_ttl=${5:-30s}
export DEBIAN_FRONTEND=noninteractive

for f in /opt/fleet-release/fleetd /opt/fleet-release/fleetctl; do
    if [ ! -x "$f" ]; then
        echo "provision.sh: $f is missing: run 'cargo build --release' on the host first" >&2
        exit 1
    fi
done

# Machines cloned from one box share its machine id, and fleet refuses a second live machine
# with the same id: give each machine its own, once.
# (FLEET_KEEP_MACHINE_ID=1: the local cluster's test of this script, whose nodes have theirs.)
if [ -z "${FLEET_KEEP_MACHINE_ID:-}" ] && [ ! -e /var/lib/fleet-machine-id-set ]; then
    rm -f /etc/machine-id /var/lib/dbus/machine-id
    systemd-machine-id-setup
    touch /var/lib/fleet-machine-id-set
fi

if [ "$role" = etcd ]; then
    apt-get update -q
    apt-get install -y -q etcd-server
    cat >/etc/default/etcd <<EOT
ETCD_NAME=$(hostname)
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=http://$ip:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ip:2379
EOT
    systemctl restart etcd
fi

install -d /opt/bin /etc/fleet /etc/systemd/system/fleet.socket.d
install -m 0755 /opt/fleet-release/fleetd /opt/fleet-release/fleetctl /opt/bin/
ln -sf /opt/bin/fleetctl /usr/local/bin/fleetctl
/opt/fleet-dist/fleet-conf "$etcd" "$ip" "$metadata" "$agent_ttl" api_insecure_http=true >/etc/fleet/fleet.conf
install -m 0644 /opt/fleet-dist/fleet.service /opt/fleet-dist/fleet.socket /etc/systemd/system/
install -m 0644 /opt/fleet-dist/fleet.socket.d/30-tcp.conf /etc/systemd/system/fleet.socket.d/
systemctl daemon-reload
systemctl enable fleet.socket fleet.service
systemctl restart fleet.socket fleet.service
