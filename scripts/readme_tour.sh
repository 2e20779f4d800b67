#!/usr/bin/env bash
# Regenerates the "Tour of the commands" session shown in README.md: a fresh
# SQLite database, two simulated pantries on loopback, every command once.
set -u
dir=$(mktemp -d)
export UDX_DATABASE_URL="sqlite:///$dir/udx.sqlite3"
udx pantry-sim --listen 127.0.0.1:17000 -q >/dev/null & a=$!
udx pantry-sim --listen 127.0.0.2:17000 -q >/dev/null & b=$!
trap 'kill $a $b 2>/dev/null; rm -rf "$dir"' EXIT
sleep 1
run() { echo "\$ $*"; "$@" 2>&1 | sed "s|$dir|/tmp/tour|g"; echo; }
run udx db init
run udx db seed --snapshots 3 --project-images 1 --silo-images 1 --seed 7
run udx pantry add 127.0.0.1:17000
run udx pantry add 127.0.0.2:17000
run udx changeset
run udx pass
run udx export list --state live
run udx pantry list
run udx pantry expunge 127.0.0.2:17000 --yes
run udx pantry affected
run udx pass --dry-run
run udx pass --json
run udx pass
run udx export list --state live
id=$(udx saga list --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["id"])')
run udx saga show "$id"
run udx export show not-a-uuid
run udx --db postgresql://udx:s3cret@127.0.0.1:1/omicron changeset
