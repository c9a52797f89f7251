"""``python -m experiments.sweep``: the sweep's command line (see ``experiments.sweep``)."""

import sys

from absl import app, flags

from experiments import run as run_lib
from experiments import sweep
from experiments.sweep import cli
from fljax.allocator import restart_with_tcmalloc

__doc__ = sweep.__doc__  # absl's --help prints the main module's docstring and key flags: the sweep's
flags.adopt_module_key_flags(cli)

if __name__ == "__main__":
    restart_with_tcmalloc()  # the command line again under tcmalloc where the system has it (FLJAX_TCMALLOC=0: not)
    app.run(lambda argv: sys.exit(cli.main(argv)), flags_parser=run_lib.parse_flags)
