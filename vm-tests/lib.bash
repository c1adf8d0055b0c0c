# vm-tests/lib.bash: what the scenarios share. vm-tests/run copies it to
# the share's root, beside the scenarios folder; a scenario sources it with
# . "$(dirname "${BASH_SOURCE[0]}")/../lib.bash"

step() { printf '\n--- %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# zfs_agent_config DIR POOL: write DIR/agent.toml for the dataset POOL/fs
# (repository, key and state under DIR) and set N2S to the agent's command.
zfs_agent_config() {
  local dir=$1 pool=$2
  cat >"$dir/agent.toml" <<EOT
repo = "$dir/repo"
key_file = "$dir/key"
state_dir = "$dir/state"
[[dataset]]
name = "$pool/fs"
source = "zfs"
EOT
  N2S=(n2s-agent --config "$dir/agent.toml")
}
