"""``python -m pyro_msm``: the command line interface (see :mod:`pyro_msm.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
