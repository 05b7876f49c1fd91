"""``python -m ivlens ...``: the ``ivlens`` command (:func:`ivlens.cli.main`)."""

from ivlens.cli import main

main()
