from ray_app.cli import main

raise SystemExit(main())
