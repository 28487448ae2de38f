#!/bin/bash
# Runs inside the pure cgroup v2 guest (ca-v2-run.service, then power-off). The work disk at
# /mnt/work holds the repository (repo/) and receives the results (results/), which the host
# reads back with debugfs. Installs the agent as container-agent.service from deploy/systemd/,
# then runs every tests/test_v2_*.py with CA_V2_GUEST=1 (the host suite leaves them out).
set -u
work=/mnt/work
repo=$work/repo
results=$work/results
summary=$results/summary.txt
exec >"$results/guest.log" 2>&1
say() { echo "$*" | tee -a "$summary"; }

say "guest kernel: $(uname -r) ($(nproc) CPUs, $(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo) MiB)"
say "guest boot: the test unit starts at uptime $(cut -d' ' -f1 /proc/uptime) s"
say "systemd: $(systemctl --version | head -1); $(python3 --version)"
say "cgroup mount: $(stat -f -c %T /sys/fs/cgroup)"
say "root cgroup.controllers: $(cat /sys/fs/cgroup/cgroup.controllers)"
say "root cgroup.subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"

# Install the agent where the unit expects it: a venv at /opt/container-agent/venv that sees
# this checkout and the dependencies baked into the image, with the two console scripts pip
# would write.
venv=/opt/container-agent/venv
python3 -m venv --without-pip "$venv"
purelib=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
printf '%s\n' "$repo" /opt/container-agent/site >"$purelib/container-agent.pth"
for entry in agentd:agent.core.launch agentctl:agent.cli.agentctl; do
    printf '#!%s\nimport sys\nfrom %s import main\nsys.exit(main())\n' \
        "$venv/bin/python" "${entry#*:}" >"$venv/bin/${entry%%:*}"
    chmod 0755 "$venv/bin/${entry%%:*}"
done
install -D -m 0644 "$repo/deploy/systemd/agent.toml" /etc/container-agent/agent.toml
# A 2 s cycle instead of the example's 5 s: the tests wait for cycles under a ~7x slower CPU.
sed -i 's/^interval = 5$/interval = 2/' /etc/container-agent/agent.toml
install -m 0644 "$repo/deploy/systemd/container-agent.service" /etc/systemd/system/
systemctl daemon-reload

cd "$repo" || exit 1
start=$(date +%s)
CA_V2_GUEST=1 CA_STRICT_SKIPS=1 PYTHONDONTWRITEBYTECODE=1 "$venv/bin/python" -m pytest -p no:cacheprovider \
    -q -ra tests/test_v2_*.py >"$results/pytest.log" 2>&1
rc=$?
say "pytest (exit $rc, $(( $(date +%s) - start )) s): $(tail -n 1 "$results/pytest.log")"
say "$(systemctl show container-agent -p ActiveState,SubState,StatusText,NRestarts,MainPID)"
systemd-analyze security --no-pager container-agent >"$results/security.txt" 2>&1
say "systemd-analyze security container-agent (online): $(grep 'Overall exposure' "$results/security.txt")"
journalctl -u container-agent --no-pager -o short-monotonic >"$results/agent-journal.log" 2>&1
journalctl -b --no-pager -p warning >"$results/warnings.log" 2>&1
echo "$rc" >"$results/pytest-rc"
sync
