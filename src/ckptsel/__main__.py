from ckptsel.cli import main

raise SystemExit(main())
