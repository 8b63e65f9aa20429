"""The stages' entry-point wrapper: a UserError becomes one line on stderr and exit code 2."""

from __future__ import annotations

import sys

from gradflow.errors import UserError


def cli(main):
    """Run a stage's main(argv); a ParamsError or DataError ends it with one line, exit 2."""

    def wrapped(argv=None):
        try:
            return main(sys.argv[1:] if argv is None else argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapped
