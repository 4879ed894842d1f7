"""``python -m training.s1_bimodal``: kept as an alias of :mod:`training.evaluate.s1_bimodal`."""

if __name__ == "__main__":
    from training.evaluate.s1_bimodal import main

    raise SystemExit(main())
