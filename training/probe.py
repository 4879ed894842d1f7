"""``python -m training.probe``: kept as an alias of :mod:`training.evaluate.probe`."""

if __name__ == "__main__":
    from training.evaluate.probe import main

    raise SystemExit(main())
