#!/usr/bin/env python3
"""Writes a minimal, valid pure-Python wheel (stdlib only).

usage: mkwheel.py OUTDIR NAME VERSION
prints the path of the wheel it wrote.
"""

import base64
import hashlib
import os
import sys
import zipfile


def record_hash(data: bytes) -> str:
    digest = hashlib.sha256(data).digest()
    return "sha256=" + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def main() -> int:
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    outdir, name, version = sys.argv[1:]
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f'"""Ferry benchmark package."""\n__version__ = "{version}"\n'.encode(),
        f"{dist_info}/METADATA": (
            "Metadata-Version: 2.1\n"
            f"Name: {name}\n"
            f"Version: {version}\n"
            "Summary: A tiny package used by Ferry's benchmark\n"
            "License: MIT\n"
            "Requires-Python: >=3.7\n"
            "\n"
            "Nothing to see here.\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            "Wheel-Version: 1.0\n"
            "Generator: ferry-bench\n"
            "Root-Is-Purelib: true\n"
            "Tag: py3-none-any\n"
        ).encode(),
    }
    record = "".join(f"{path},{record_hash(data)},{len(data)}\n" for path, data in files.items())
    record += f"{dist_info}/RECORD,,\n"
    files[f"{dist_info}/RECORD"] = record.encode()

    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"{module}-{version}-py3-none-any.whl")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name_in_zip, data in files.items():
            info = zipfile.ZipInfo(name_in_zip, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
