"""``python -m training.mapscore``: kept as an alias of :mod:`training.evaluate.mapscore`."""

if __name__ == "__main__":
    from training.evaluate.mapscore import main

    raise SystemExit(main())
