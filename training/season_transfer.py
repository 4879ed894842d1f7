"""``python -m training.season_transfer``: kept as an alias of :mod:`training.evaluate.season_transfer`."""

if __name__ == "__main__":
    from training.evaluate.season_transfer import main

    raise SystemExit(main())
