"""``python -m training.ps_scenes``: kept as an alias of :mod:`training.simulate.ps_scenes`."""

if __name__ == "__main__":
    from training.simulate.ps_scenes import main

    raise SystemExit(main())
