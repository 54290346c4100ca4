"""The `bale` command line: parse, call the library, render. No logic lives here.

`options` holds the option groups (each reaches a command as one typed object), `output` the
lines bale writes and `finish_run`, `runtime` what a command opens (store, session, display);
one module per command (`archive` holds `run` too, `inspect` holds `list-tags`).
"""

from __future__ import annotations

from pipeline.cli import (
    archive,
    copy,
    gc,
    inspect,
    ls,
    pin,
    prune,
    reconcile,
    restore,
    serve,
    sync,
    thaw,
    verify,
)
from pipeline.cli.group import main

for _command in (
    archive.archive_command,
    archive.run_command,
    copy.copy_command,
    gc.gc_command,
    inspect.inspect_command,
    inspect.list_tags_command,
    ls.ls_command,
    reconcile.reconcile_command,
    pin.pin_command,
    prune.prune_command,
    restore.restore_command,
    serve.serve_command,
    sync.sync_command,
    verify.verify_command,
):
    main.add_command(_command)
main.add_command(thaw.thaw_command)

__all__ = ["main"]
