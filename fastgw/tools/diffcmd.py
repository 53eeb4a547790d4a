"""``fastgw diff OLD.yaml NEW.yaml``: what a reload from OLD to NEW would change.

The same summary as the reload log line (``fastgw.config.diff``), referenced files
included (their content now, for each config), plus the settings a reload refuses
(restart-only).  Exit like diff(1): 0 no change, 1 changes, 2 an error.
"""

from __future__ import annotations

import sys

from fastgw.config import ConfigError, load_config
from fastgw.config.diff import diff
from fastgw.supervisor.reload import fingerprint, restart_only_changes


def run(old_path: str, new_path: str, out=sys.stdout, err=sys.stderr) -> int:
    cfgs = []
    for path in (old_path, new_path):
        try:
            cfgs.append(load_config(path)[0])
        except ConfigError as e:
            print(f"fastgw diff: {path}: invalid config ({len(e.errors)} error{'' if len(e.errors) == 1 else 's'}):",
                  file=err)
            for line in e.errors:
                print(f"  {line}", file=err)
            return 2
    old, new = cfgs
    summary = diff(old, new, fingerprint(old), fingerprint(new))
    restart = restart_only_changes(old, new)
    if not summary and not restart:
        print("no changes", file=out)
        return 0
    for line in summary.lines():
        print(line, file=out)
    for line in restart:
        print(f"restart needed: {line}", file=out)
    return 1
