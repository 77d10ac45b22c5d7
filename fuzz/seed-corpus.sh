#!/usr/bin/env bash
# Writes a few well-formed inputs per fuzz target into fuzz/corpus/<target>/, so each
# run starts from records of the right shape rather than from nothing. Idempotent.
set -euo pipefail
cd "$(dirname "$0")"

seed() { # seed TARGET NAME  (content on stdin)
    mkdir -p "corpus/$1"
    cat > "corpus/$1/seed-$2"
}
ts='2026-11-24T10:30:00.123Z'

printf 'test-fixer-001' | seed id plain
printf 'a.b_c-d' | seed id dots
printf '90s' | seed time duration
printf '1.5' | seed time seconds
printf '%s' "$ts" | seed time timestamp
printf '{\n  "a": [1, 2.5, "x"],\n  "b": {"c": null}\n}\n' | seed fsio_json doc
printf '{"id":"op-1","operation":"op","started_at":"%s","status":"active","agents":["w1"],"coordinator":"u@h","layout_version":1,"custom":{"k":1}}\n' "$ts" | seed session_json session
printf '[{"id":"w1","type":"worker","status":"active","registered_at":"%s","capabilities":["gpu"],"assigned_tasks":[],"pid":1,"host":"h","process_start":5,"resource_usage":{"cpu":"1%%","memory":"1MB","threads":1}}]\xff\x00\x10\x00\x00\x00\x00\x00\x00' "$ts" | seed agents_json agents
rec='{"id":"t1","status":"%s","agent_type":"w","capabilities":["gpu"],"priority":2,"payload":{"n":1},"dependencies":[],"attempts":1,"max_attempts":3,"created_at":"%s","seq":7%s}'
printf "\x01$rec" pending "$ts" '' | seed task_record pending
printf "\x02$rec" claimed "$ts" ",\"assigned_to\":\"w1\",\"assigned_at\":\"$ts\",\"claim_token\":\"ab\",\"lease_seconds\":300.0,\"lease_expires_at\":\"$ts\"" | seed task_record claimed
printf "\x03$rec" completed "$ts" ",\"completed_at\":\"$ts\",\"results\":{\"ok\":true}" | seed task_record done
printf '{"id":"a","priority":1,"payload":{"n":1}}\n{"id":"b","type":"w","capabilities":["gpu"],"after":["a"],"max_attempts":2}\n' | seed task_batch two
printf '{"payload":null}\n\xff41\n' | seed task_batch seq
printf '~+/09223372036854775807/000000000000/0000000000000001.t1.json\nw+gpu/09223372036854775806/000000000000/0000000000000002.t2.json\n' | seed task_index two
printf '{"id":"msg-1767225600000000-1-h-1-ab","from":"coordinator","to":"w1","type":"job","timestamp":"%s","payload":{"n":1},"requires_ack":true,"priority":3,"delivery_count":0,"host":"h"}' "$ts" | seed message_file message
printf 'coordinator\xff{"to":"w1","type":"job","payload":{"n":1}}\n\n{"to":"w2","type":"stop","priority":5,"requires_ack":true,"from":"w1"}\n' | seed msg_batch two
printf '{"errors":[],"phase":"discovery"}\xff/errors/-\xff"e1"' | seed state_pointer append
printf '{"a":{"b":[1,2]}}\xff/a/b/1\xff{"x":true}' | seed state_pointer index
printf '{"tasks":[{"id":"t1","status":"completed","claimed_at":"%s","completed_at":"%s","attempt":1},{"id":"t2","status":"failed","error":"boom"}],"execution_time":3.5,"note":"n"}' "$ts" "$ts" | seed result_file file
printf '{"agent":"a","tasks":[{"id":"t1","status":"completed"}],"execution_time":1.5}\n{"agent":"a","tasks":[{"id":"t2","status":"failed"}],"execution_time":0.5}\n{"agent":"a","tasks":[' | seed result_log log
# archive_extract: form 1 is a description of entries: kind, path pieces, mode, time, content.
printf '\x01\x01\x01\x00\x01\xa4\x00\x00\x00\x00\x65\x00\x00\x00\x00\x00\x04abcd\x02\x02\x00\x06\x01\x0a\x01\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00' | seed archive_extract entries
tmp=$(mktemp -d)
mkdir -p "$tmp/s/results" && printf '{}' > "$tmp/s/results/a.json" && ln -s ../results "$tmp/s/link"
{ printf '\x00'; tar -C "$tmp" -cf - s; } | seed archive_extract tar
rm -rf "$tmp"
