from grufast.cli import main

raise SystemExit(main())
