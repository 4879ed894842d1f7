"""``python -m training.scene_export``: kept as an alias of :mod:`training.simulate.scene_export`."""

if __name__ == "__main__":
    from training.simulate.scene_export import main

    raise SystemExit(main())
