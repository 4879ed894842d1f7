"""``python -m training.seedtable``: kept as an alias of :mod:`training.evaluate.seedtable`."""

if __name__ == "__main__":
    from training.evaluate.seedtable import main

    raise SystemExit(main())
