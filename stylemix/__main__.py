from stylemix.cli import main

main()
