from edgefleet.tools.cli import main

main()
