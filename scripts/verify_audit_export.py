#!/usr/bin/env python3
"""Verify a Concord audit export (`concord audit export`) independently.

Uses only the hash format the README documents, not Concord's code:

    hash = hex(sha256(json))

where `json` is the entry serialized compactly (no spaces), with every field
except `hash`, in the order they appear in the export, and non-ASCII text
left as UTF-8. The first entry's prev_hash is 64 zeros; each entry's
prev_hash is the previous entry's hash; seq counts up from 1.

Usage: verify_audit_export.py EXPORT.jsonl
Exit status: 0 intact, 1 broken (the first bad entry is named), 2 bad usage.
"""
import hashlib
import json
import sys


def main(path):
    prev = "0" * 64
    expected_seq = 1
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            entry = json.loads(line)  # dicts keep the export's field order
            claimed = entry.pop("hash")
            if entry["seq"] != expected_seq:
                print(f"BROKEN at line {n}: expected seq {expected_seq}, found {entry['seq']}")
                return 1
            if entry["prev_hash"] != prev:
                print(f"BROKEN at entry {entry['seq']}: prev_hash does not match the previous entry")
                return 1
            body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            if hashlib.sha256(body).hexdigest() != claimed:
                print(f"BROKEN at entry {entry['seq']}: its contents do not match its hash")
                return 1
            prev = claimed
            expected_seq += 1
    print(f"intact: {expected_seq - 1} entries, head {prev}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__.strip().splitlines()[-2], file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
