from mlaas4hep_client.cli import main

raise SystemExit(main())
