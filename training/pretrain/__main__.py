"""``python -m training.pretrain``."""

from training.pretrain.run import main

raise SystemExit(main())
