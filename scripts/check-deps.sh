#!/usr/bin/env bash
# Fails when the top-level modules of coord-core import each other in a circle.
#
# Usage: scripts/check-deps.sh [--graph] [SRC_DIR]
#
# SRC_DIR defaults to crates/coord-core/src next to this script. Every top-level module
# (SRC_DIR/<m>.rs with SRC_DIR/<m>/**/*.rs) is a node; a reference `crate::<x>` in its
# code (a `use crate::…` line, grouped `use crate::{a, b::c}` included, or a path written
# out in the code) is an edge <m> -> <x>. Names the crate root re-exports (`pub use
# error::{Error, Result}` in lib.rs) count as their module. Comments, doc comments
# included, do not count, and references between the files of one top-level module
# (task/*, report/*) are not edges. docs/architecture.md describes the layers.
#
# With --graph it prints the edges, one `from -> to` a line, before checking.
# Exit status: 0 without a circle; 1 with one, each circle named on stderr as
# `circle: a -> b -> a`; 2 on a usage error.
set -euo pipefail

graph=0
if [[ "${1:-}" == "--graph" ]]; then
    graph=1
    shift
fi
if [[ $# -gt 1 ]]; then
    echo "usage: $0 [--graph] [SRC_DIR]" >&2
    exit 2
fi
src="${1:-$(dirname "$0")/../crates/coord-core/src}"
if [[ ! -f "$src/lib.rs" ]]; then
    echo "check-deps: no lib.rs in $src" >&2
    exit 2
fi

files=()
while IFS= read -r f; do
    files+=("$f")
done < <(find "$src" -name '*.rs' -type f | LC_ALL=C sort)

awk -v src="$src" -v graph="$graph" '
function module_of(path,    rel, i) {
    rel = substr(path, length(src) + 2)
    i = index(rel, "/")
    if (i > 0) return substr(rel, 1, i - 1)
    sub(/\.rs$/, "", rel)
    return rel
}
# Strips a line comment (and so doc comments) unless the slashes sit inside a string.
function strip_comment(line,    out, i, c, instr) {
    out = ""
    instr = 0
    for (i = 1; i <= length(line); i++) {
        c = substr(line, i, 1)
        if (instr) {
            if (c == "\\") { out = out c substr(line, i + 1, 1); i++; continue }
            if (c == "\"") instr = 0
        } else {
            if (c == "\"") instr = 1
            else if (c == "/" && substr(line, i + 1, 1) == "/") break
        }
        out = out c
    }
    return out
}
function add_edge(from, name) {
    if (name in alias) name = alias[name]
    if (!(name in is_module) || name == from) return
    if (!((from, name) in edge)) {
        edge[from, name] = 1
        nout[from]++
        out[from, nout[from]] = name
    }
}
# Adds an edge for each first path segment in the text of a `crate::{…}` group.
function add_group(from, text,    depth, i, c, item, start) {
    depth = 0
    start = 1
    item = ""
    for (i = 1; i <= length(text); i++) {
        c = substr(text, i, 1)
        if (c == "{") depth++
        else if (c == "}") depth--
        if (depth == 0 && c == ",") { add_item(from, item); item = ""; continue }
        item = item c
    }
    add_item(from, item)
}
function add_item(from, item) {
    gsub(/^[ \t\n]+/, "", item)
    if (match(item, /^[A-Za-z_][A-Za-z0-9_]*/)) add_edge(from, substr(item, 1, RLENGTH))
}
function scan(from, text,    rest, p, depth, i, c) {
    rest = text
    while ((p = index(rest, "crate::")) > 0) {
        # `crate::` must not be the tail of a longer name (e.g. `my_crate::`).
        if (p > 1 && substr(rest, p - 1, 1) ~ /[A-Za-z0-9_]/) { rest = substr(rest, p + 7); continue }
        rest = substr(rest, p + 7)
        sub(/^[ \t\n]+/, "", rest)
        if (substr(rest, 1, 1) == "{") {
            depth = 0
            for (i = 1; i <= length(rest); i++) {
                c = substr(rest, i, 1)
                if (c == "{") depth++
                else if (c == "}") { depth--; if (depth == 0) break }
            }
            add_group(from, substr(rest, 2, i - 2))
            rest = substr(rest, i + 1)
        } else if (match(rest, /^[A-Za-z_][A-Za-z0-9_]*/)) {
            add_edge(from, substr(rest, 1, RLENGTH))
        }
    }
}
FNR == 1 {
    mod = module_of(FILENAME)
    if (mod != "lib") { is_module[mod] = 1; order[++nmods] = mod }
}
{
    line = strip_comment($0)
    if (mod == "lib") {
        # `pub use error::{Error, Result};` makes `crate::Error` a reference to error.
        if (match(line, /^[ \t]*pub use [a-z_][a-z0-9_]*::/)) {
            target = line
            sub(/^[ \t]*pub use /, "", target)
            names = substr(target, index(target, "::") + 2)
            target = substr(target, 1, index(target, "::") - 1)
            gsub(/[{};]/, " ", names)
            n = split(names, parts, /[ ,]+/)
            for (k = 1; k <= n; k++) {
                nm = parts[k]
                if (nm ~ / as /) continue
                if (nm != "") alias[nm] = target
            }
        }
        next
    }
    text[mod] = text[mod] line "\n"
}
function visit(m,    k, n, p, cyc) {
    color[m] = 1
    stack[++depth] = m
    for (k = 1; k <= nout[m]; k++) {
        n = out[m, k]
        if (color[n] == 1) {
            cyc = n
            for (p = depth; p >= 1 && stack[p] != n; p--) ;
            cyc = stack[p]
            for (p = p + 1; p <= depth; p++) cyc = cyc " -> " stack[p]
            cyc = cyc " -> " n
            print "circle: " cyc > "/dev/stderr"
            found = 1
        } else if (color[n] == 0) {
            visit(n)
        }
    }
    depth--
    color[m] = 2
}
END {
    seen_mods = 0
    for (i = 1; i <= nmods; i++) {
        m = order[i]
        if (m in done_scan) continue
        done_scan[m] = 1
        scan(m, text[m])
    }
    if (graph) {
        for (i = 1; i <= nmods; i++) {
            m = order[i]
            if (m in printed) continue
            printed[m] = 1
            for (k = 1; k <= nout[m]; k++) print m " -> " out[m, k]
        }
    }
    found = 0
    depth = 0
    for (i = 1; i <= nmods; i++) if (color[order[i]] == 0) visit(order[i])
    exit found
}
' "${files[@]}"
