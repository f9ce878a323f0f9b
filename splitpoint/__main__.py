from splitpoint.cli import main

main()
