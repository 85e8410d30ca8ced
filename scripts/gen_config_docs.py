#!/usr/bin/env python3
"""Rewrite the generated configuration tables in README.md and the chart README.

    scripts/gen_config_docs.py          # rewrite both files in place
    scripts/gen_config_docs.py --check  # exit 1 if either file is out of date

The tables come from the settings model's field descriptions and defaults
(tagging_sidecar/settings_doc.py); `tagging-sidecar run --help` prints the same reference.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tagging_sidecar.settings_doc import documents, replace_block  # noqa: E402


def main() -> int:
    """Rewrite (or, with --check, verify) every document's generated block."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only report files out of date")
    args = parser.parse_args()
    stale = []
    for path in documents(ROOT):
        text = path.read_text()
        fresh = replace_block(text)
        if fresh == text:
            continue
        stale.append(path)
        if not args.check:
            path.write_text(fresh)
    for path in stale:
        verb = "out of date" if args.check else "rewritten"
        print(f"{path.relative_to(ROOT)}: {verb}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
