#!/bin/sh
# Sets up one Vagrant machine of a fleet cluster (run by `vagrant up` as root).
#
# usage: provision.sh PUBLIC_IP ETCD_SERVERS METADATA etcd|member [AGENT_TTL]
#
# Uses the project's own files, synced into the machine: the release binaries in
# /opt/fleet-release and fleetd/dist in /opt/fleet-dist (the units, the TCP drop-in and the
# fleet.conf generator the local nspawn cluster uses too), and the cluster's two CAs in
# /opt/fleet-pki/ca and /opt/fleet-pki/etcd-ca (`fleetctl tls ca create`; the Vagrantfile makes
# them on the host), from which this machine's certificates are issued here, into
# /etc/fleet/pki: its machine certificate for the API and the peer endpoint, its client
# certificate for etcd, and on the etcd machine etcd's own. etcd serves TLS to clients with a
# certificate of etcd's CA only.
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

install -d /opt/bin /etc/fleet /etc/systemd/system/fleet.socket.d
install -m 0755 /opt/fleet-release/fleetd /opt/fleet-release/fleetctl /opt/bin/
ln -sf /opt/bin/fleetctl /usr/local/bin/fleetctl

# This machine's certificates, issued once (a machine certificate names the machine id).
pki=/etc/fleet/pki
if [ ! -f "$pki/etcd.pem" ]; then
    for f in /opt/fleet-pki/ca/ca-key.pem /opt/fleet-pki/etcd-ca/ca-key.pem; do
        if [ ! -f "$f" ]; then
            echo "provision.sh: $f is missing: the Vagrantfile makes the cluster's CAs on the host (in .fleet-pki)" >&2
            exit 1
        fi
    done
    rm -rf "$pki.tmp"
    install -d -m 0755 "$pki.tmp"
    cp /opt/fleet-pki/ca/ca.pem "$pki.tmp/ca.pem"
    cp /opt/fleet-pki/etcd-ca/ca.pem "$pki.tmp/etcd-ca.pem"
    /opt/bin/fleetctl tls cert create --ca /opt/fleet-pki/ca --role machine \
        --name "$(cat /etc/machine-id)" --ip "$ip" --dns "$(hostname)" --out "$pki.tmp/machine"
    /opt/bin/fleetctl tls cert create --ca /opt/fleet-pki/etcd-ca --role etcd-client \
        --name "$(hostname)" --out "$pki.tmp/etcd"
    if [ "$role" = etcd ]; then
        /opt/bin/fleetctl tls cert create --ca /opt/fleet-pki/etcd-ca --role etcd-server \
            --name "$(hostname)" --ip "$ip" --ip 127.0.0.1 --dns localhost --out "$pki.tmp/etcd-server"
    fi
    rm -rf "$pki"
    mv "$pki.tmp" "$pki"
fi
# The CAs' keys are not kept on the machine once it has its certificates (where they are a
# read-only bind, as on fleet-cluster's vagrant-node, they stay: that is the host's).
rm -f /opt/fleet-pki/ca/ca-key.pem /opt/fleet-pki/etcd-ca/ca-key.pem 2>/dev/null || true

if [ "$role" = etcd ]; then
    apt-get update -q
    apt-get install -y -q etcd-server
    install -d -o etcd -m 0700 /etc/etcd-pki
    install -o etcd -m 0600 "$pki/etcd-server.pem" "$pki/etcd-server-key.pem" "$pki/etcd-ca.pem" /etc/etcd-pki/
    cat >/etc/default/etcd <<EOT
ETCD_NAME=$(hostname)
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=https://$ip:2379,https://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=https://$ip:2379
ETCD_CERT_FILE=/etc/etcd-pki/etcd-server.pem
ETCD_KEY_FILE=/etc/etcd-pki/etcd-server-key.pem
ETCD_CLIENT_CERT_AUTH=true
ETCD_TRUSTED_CA_FILE=/etc/etcd-pki/etcd-ca.pem
# etcd 3.4 copies its writes not yet in its database file for every read and every answer:
# at most 200 of them keeps that cheap under thousands of machines (README, fleetd).
ETCD_BACKEND_BATCH_LIMIT=200
# Every write stays in etcd's history until compacted: keep an hour of it (README, fleetd).
ETCD_AUTO_COMPACTION_MODE=periodic
ETCD_AUTO_COMPACTION_RETENTION=1h
EOT
    systemctl restart etcd
fi

/opt/fleet-dist/fleet-conf "$etcd" "$ip" "$metadata" "$agent_ttl" "etcd_cafile=$pki/etcd-ca.pem
etcd_certfile=$pki/etcd.pem
etcd_keyfile=$pki/etcd-key.pem
api_cafile=$pki/ca.pem
api_certfile=$pki/machine.pem
api_keyfile=$pki/machine-key.pem" >/etc/fleet/fleet.conf
install -m 0644 /opt/fleet-dist/fleet.service /opt/fleet-dist/fleet.socket /etc/systemd/system/
install -m 0644 /opt/fleet-dist/fleet.socket.d/30-tcp.conf /etc/systemd/system/fleet.socket.d/
systemctl daemon-reload
systemctl enable fleet.socket fleet.service
systemctl restart fleet.socket fleet.service
