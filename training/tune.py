"""``python -m training.tune``: kept as an alias of :mod:`training.downstream.tune`."""

if __name__ == "__main__":
    from training.downstream.tune import main

    raise SystemExit(main())
