#!/usr/bin/env bash
# One command: boot a local Debian 12 systemd host (systemd-nspawn), provision it with playbooks/site.yml,
# run the demo workflow through the appliance's HTTP endpoints, print the endpoints and the prediction.
# Tear down with scripts/appliance-down.sh. Debian 12, as root. See docs/deployment.md.
#
# Environment: MLAAS4HEP_HOST_NAME (mlaas4hep-appliance), MLAAS4HEP_HOST_SSH_PORT (22223),
# MLAAS4HEP_HOST_PORT_BASE (38000: API +80, TFaaS +83, XRootD proxy +94, demo origin +95),
# MLAAS4HEP_OAUTH2_PROXY_ARCHIVE (an oauth2-proxy release tar.gz; with it the fronts run too).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

NAME=${MLAAS4HEP_HOST_NAME:-mlaas4hep-appliance}
SSH_PORT=${MLAAS4HEP_HOST_SSH_PORT:-22223}
BASE=${MLAAS4HEP_HOST_PORT_BASE:-38000}
API_PORT=$((BASE + 80)) TFAAS_PORT=$((BASE + 83)) PROXY_PORT=$((BASE + 94)) ORIGIN_PORT=$((BASE + 95))
# The demo's OIDC issuer: the test identity provider e2e.py runs on this port; the appliance is the owner's.
IDP_PORT=$((BASE + 90)) OWNER_SUB=demo-owner
# The worker's uid range for jobs: the role's default (mlaas4hep_job_uids), which e2e.py checks jobs run under.
JOB_UIDS=61000-61999
STATE=${MLAAS4HEP_NSPAWN_STATE:-/var/lib/mlaas4hep-nspawn}/$NAME
ARCHIVE=${MLAAS4HEP_OAUTH2_PROXY_ARCHIVE:-}

step() { printf '\n==> %s\n' "$*"; }

step "host packages and the controller's virtual environment (scripts/bootstrap.sh)"
bash scripts/bootstrap.sh
source scripts/venv.sh
export PATH=$VENV/bin:$PATH ANSIBLE_ROLES_PATH=$REPO/roles ANSIBLE_HOST_KEY_CHECKING=false ANSIBLE_PIPELINING=true

step "booting the Debian 12 systemd host $NAME"
bash molecule/default/nspawn_host.sh create "$NAME" "$SSH_PORT"

step "packing this working tree for the mlaas4hep role"
work=$STATE/controller
mkdir -p "$work"
bash scripts/pack-source.sh "$work/source.tar.gz"

oauth2_vars="oauth2_proxy_install: false
      oauth2_proxy_service_manage: false"
if [[ -n $ARCHIVE ]]; then
  oauth2_vars="oauth2_proxy_local_archive: /root/oauth2-proxy.tar.gz
      oauth2_proxy_archive_sha256: $(sha256sum "$ARCHIVE" | cut -d' ' -f1)"
  install -m 0644 "$ARCHIVE" "$STATE/rootfs/root/oauth2-proxy.tar.gz"
fi
cat >"$work/inventory.yml" <<INV
---
appliance:
  hosts:
    $NAME:
      ansible_host: 127.0.0.1
      ansible_port: $SSH_PORT
      ansible_user: root
      ansible_ssh_private_key_file: $STATE/id_ed25519
      ansible_python_interpreter: /usr/bin/python3
      mlaas4hep_source: archive
      mlaas4hep_source_archive: $work/source.tar.gz
      mlaas4hep_port: $API_PORT
      tfaas_port: $TFAAS_PORT
      xrootd_proxy_port: $PROXY_PORT
      xrootd_proxy_origin: 127.0.0.1:$ORIGIN_PORT
      # The host shares this machine's network: the rules are rendered, not loaded.
      appliance_base_firewall_apply: false
      appliance_base_ssh_port: $SSH_PORT
      oauth2_proxy_public_host: localhost
      oauth2_proxy_issuer_url: http://127.0.0.1:$IDP_PORT
      oauth2_proxy_owner_sub: $OWNER_SUB
      oauth2_proxy_client_id: ${MLAAS4HEP_OAUTH2_CLIENT_ID:-local-demo}
      oauth2_proxy_client_secret: ${MLAAS4HEP_OAUTH2_CLIENT_SECRET:-local-demo-secret}
      $oauth2_vars
INV

step "a stand-in remote site: an XRootD origin on the host (127.0.0.1:$ORIGIN_PORT)"
ansible-playbook -i "$work/inventory.yml" molecule/default/prepare.yml -e "molecule_origin_port=$ORIGIN_PORT"

step "provisioning with playbooks/site.yml"
start=$(date +%s)
ansible-playbook -i "$work/inventory.yml" playbooks/site.yml
echo "site.yml took $(($(date +%s) - start)) s"

# The converge's last handlers restart the services; TFaaS loads its models before it accepts connections.
step "waiting for the API and TFaaS to answer"
for url in "http://127.0.0.1:$API_PORT/health" "http://127.0.0.1:$TFAAS_PORT/v2/health/ready"; do
  for _ in $(seq 180); do
    curl -fsS -o /dev/null "$url" && break
    sleep 1
  done
  curl -fsS -o /dev/null "$url" || { echo "appliance-up: $url does not answer" >&2; exit 1; }
done

step "demo workflow: root:// files through the XRootD proxy, POST /jobs, then a TFaaS prediction"
scp -q -P "$SSH_PORT" -i "$STATE/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  molecule/default/e2e.py tests/auth/idp.py "root@127.0.0.1:/root/"
ssh -p "$SSH_PORT" -i "$STATE/id_ed25519" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR \
  root@127.0.0.1 /opt/mlaas4hep/venv/bin/python /root/e2e.py --name demo.higgs \
  --origin-dir /srv/origin/store/molecule --data-url "root://127.0.0.1:$PROXY_PORT//store/molecule" \
  --api "http://127.0.0.1:$API_PORT" --tfaas "http://127.0.0.1:$TFAAS_PORT" \
  --idp-port "$IDP_PORT" --owner-sub "$OWNER_SUB" --client /opt/mlaas4hep/venv/bin/mlaas4hep-client \
  --job-uids "$JOB_UIDS"

cat <<END

The appliance runs in the systemd host $NAME (ssh -p $SSH_PORT -i $STATE/id_ed25519 root@127.0.0.1).
  MLaaS4HEP API   http://127.0.0.1:$API_PORT      (POST /jobs, GET /jobs/<id>)
  TFaaS           http://127.0.0.1:$TFAAS_PORT      (POST /json, GET /models)
  XRootD proxy    root://127.0.0.1:$PROXY_PORT//store/...
  oauth2-proxy    https://<host>:4433 and :8081 on a VM; $( [[ -n $ARCHIVE ]] && echo "running here too" || echo "rendered only here (no binary: give MLAAS4HEP_OAUTH2_PROXY_ARCHIVE)")
Tear down: bash scripts/appliance-down.sh
END
