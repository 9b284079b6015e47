from tokentrail.api.cli.main import main

main()
