from postkasse.cli import main

raise SystemExit(main())
