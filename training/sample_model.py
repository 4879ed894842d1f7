"""``python -m training.sample_model``: kept as an alias of :mod:`training.downstream.sample_model`."""

if __name__ == "__main__":
    from training.downstream.sample_model import main

    raise SystemExit(main())
