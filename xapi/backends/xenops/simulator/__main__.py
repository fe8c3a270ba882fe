from xapi.backends.xenops.simulator import main

main()
