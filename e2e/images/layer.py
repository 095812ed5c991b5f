#!/usr/bin/env python3
"""Writes a directory as an image layer: a tar with its entries sorted, every time set to
the epoch and every file owned by root, except the paths named with --owner, so the same
inputs always give the same layer (and digest).

usage: layer.py DIR OUT.tar [--owner PATH=UID:GID]...
"""

import argparse
import os
import tarfile


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--owner", action="append", default=[])
    args = parser.parse_args()
    owners = {}
    for spec in args.owner:
        path, ids = spec.split("=", 1)
        uid, gid = ids.split(":", 1)
        owners[path.strip("/")] = (int(uid), int(gid))

    def owner_of(name):
        for path, ids in owners.items():
            if name == path or name.startswith(path + "/"):
                return ids
        return (0, 0)

    entries = []
    for dirpath, dirnames, filenames in os.walk(args.root):
        dirnames.sort()
        for name in dirnames + sorted(filenames):
            full = os.path.join(dirpath, name)
            entries.append(os.path.relpath(full, args.root))
    with tarfile.open(args.out, "w", format=tarfile.PAX_FORMAT) as tar:
        for rel in sorted(entries):
            info = tar.gettarinfo(os.path.join(args.root, rel), arcname=rel)
            info.mtime = 0
            info.uid, info.gid = owner_of(rel)
            info.uname = info.gname = ""
            if info.isfile():
                with open(os.path.join(args.root, rel), "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)


if __name__ == "__main__":
    main()
