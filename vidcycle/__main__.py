from vidcycle.cli import main

main()
