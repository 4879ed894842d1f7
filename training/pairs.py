"""``python -m training.pairs``: kept as an alias of :mod:`training.data.pairs`."""

if __name__ == "__main__":
    from training.data.pairs import main

    raise SystemExit(main())
