"""``python -m experiments.sweep``: the sweep's command line (see ``experiments.sweep``)."""

import sys

from absl import app, flags

from experiments import run as run_lib
from experiments import sweep
from experiments.sweep import cli

__doc__ = sweep.__doc__  # absl's --help prints the main module's docstring and key flags: the sweep's
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    app.run(lambda argv: sys.exit(cli.main(argv)), flags_parser=run_lib.parse_flags)
