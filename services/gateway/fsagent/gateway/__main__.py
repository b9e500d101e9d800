from fsagent.gateway.main import main

main()
