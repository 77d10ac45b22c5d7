#!/usr/bin/env bash
# Install the tools, their man pages and shell completions.
#
#   scripts/install.sh [PREFIX]          (default: ~/.local)
#
# PREFIX/bin/                                  the eight tools (`cargo install --path crates/<tool>`)
# PREFIX/share/man/man1/                       <tool>.1 and <tool>-<subcommand>.1
# PREFIX/share/bash-completion/completions/    <tool>
# PREFIX/share/zsh/site-functions/             _<tool>
# PREFIX/share/fish/vendor_completions.d/      <tool>.fish
#
# Pages and completions are generated from the tools' own argument definitions
# (COORD_GENERATE=KIND:DIR, see docs/install.md). The tools are built by
# scripts/lib/release.sh (static on Linux with glibc; COORD_STATIC=0 for dynamic); with
# COORD_BIN=DIR the tools already built in DIR are copied instead.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib/release.sh"
prefix=${1:-$HOME/.local}
tools=(session-init registry state msgq taskd healthmon aggregate archive coord-mcp)

bin=${COORD_BIN:-$(coord_release_dir)}
mkdir -p "$prefix/bin"
for t in "${tools[@]}"; do
  install -m 0755 "$bin/$t" "$prefix/bin/$t"
done

man=$prefix/share/man/man1 bash_dir=$prefix/share/bash-completion/completions
zsh_dir=$prefix/share/zsh/site-functions fish_dir=$prefix/share/fish/vendor_completions.d
mkdir -p "$man" "$bash_dir" "$zsh_dir" "$fish_dir"
gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
for t in "${tools[@]}"; do
  COORD_GENERATE="man:$man" "$prefix/bin/$t" >/dev/null
  for kind in bash zsh fish; do COORD_GENERATE="$kind:$gen" "$prefix/bin/$t" >/dev/null; done
  mv "$gen/$t.bash" "$bash_dir/$t"
  mv "$gen/_$t" "$zsh_dir/_$t"
  mv "$gen/$t.fish" "$fish_dir/$t.fish"
done

echo "installed ${#tools[@]} tools in $prefix/bin, man pages in $man, completions for bash, zsh and fish"
case ":$PATH:" in *":$prefix/bin:"*) ;; *) echo "add $prefix/bin to PATH" ;; esac
