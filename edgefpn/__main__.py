"""``python -m edgefpn``: the ``edgefpn`` command line (what ``torchrun -m edgefpn train ...`` runs on each
rank)."""

from edgefpn.cli import main

if __name__ == "__main__":
    main(prog_name="edgefpn")
