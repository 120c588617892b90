from hwcompress.cli import main

main()
