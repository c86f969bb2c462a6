from pyagent.cli import main

raise SystemExit(main())
